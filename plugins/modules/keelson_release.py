#!/usr/bin/python
# Keelson: release directories of compose projects.
# MIT License (see LICENSE)

DOCUMENTATION = r"""
module: keelson_release
short_description: Own the release directories of a compose project and its current pointer
description:
  - Owns C(<root>/<project>/releases/<release-id>/) and the symlink C(<root>/<project>/current)
    (docs/stack.md, "Deploy mechanism"). Nothing else writes there; secrets live next to it
    in C(secrets/) and are not this module's business.
  - A release id is C(<UTC yyyymmddTHHMMSSZ>-<first 8 hex of the config hash>). The config hash
    is a sha256 over the sorted (file name, content) pairs and the sorted (image ref, image id) pairs.
  - C(state=prepared) finds the release with the same config hash or creates a new one. A new
    release is built in a temporary directory (every file written to a temporary name, fsynced
    and renamed), C(release.json) is written last and the directory is renamed into place, so a
    half-written release never looks complete. Directories without C(release.json) are not
    listed and are removed by the next C(prepared) or C(active).
  - An existing release with the same hash is reused whatever its result; a C(failed) one is
    retried in place (its record keeps C(result=failed) until C(active) or C(failed) records the
    new outcome). If its files no longer match the input (edited, removed or added by hand,
    wrong mode or owner), they are made to match again and the run reports C(changed=true) and
    the names in RV(repaired). O(meta) is recorded only when a release is created.
  - C(state=active) marks the release active (with the activation time and the previous
    release), marks any other active release C(superseded) (a C(failed) record stays failed),
    swaps C(current) by renaming a new symlink over it, and prunes old releases so that
    O(keep) remain. The current and the previous release are never pruned; the rest kept are
    the newest by creation time, so rolling back to an old release keeps it.
  - C(state=failed) records C(result=failed) and O(error) in the release's C(release.json) and
    never touches C(current).
  - C(state=list) returns the releases, newest first.
  - In check mode nothing is written; the result says what would change. C(active) and
    C(failed) on a release that does not exist yet (a first run, where C(prepared) created
    nothing) warn and report C(changed=true) instead of failing.
options:
  project:
    description: Project name, also the directory C(<root>/<project>). Must match C(^keelson-[a-z0-9-]+$).
    type: str
    required: true
  root:
    description: Directory that holds every project.
    type: path
    default: /opt/keelson
  state:
    description: Which step to run.
    type: str
    choices: [prepared, active, failed, list]
    default: prepared
  files:
    description:
      - Rendered files of the release, relative file name to content (text). Required for C(prepared).
      - Names are relative paths without C(.), C(..) or empty components; sub-directories are allowed.
        C(release.json) is reserved.
    type: dict
  file_mode:
    description: Mode of the files written (octal, e.g. C('0640')). Directories are created 0750.
    type: raw
    default: '0640'
  images:
    description: Images of the release; their ids are part of the config hash.
    type: list
    elements: dict
    default: []
    suboptions:
      ref:
        description: Image reference (C(repo:tag) or C(repo:tag@sha256:...)).
        type: str
        required: true
      id:
        description: Image id (C(sha256:...)).
        type: str
        required: true
  meta:
    description:
      - Extra keys merged into a new release's C(release.json), e.g. C(git_commit), C(deployed_by).
      - Keys the module records itself (C(id), C(result), C(created), ...) are refused.
      - With C(active) (when it moves C(current) or changes the result) and C(failed) the keys are merged into the
        existing record, e.g. the id of the upgrade that activated a reused release, or who marked it bad.
    type: dict
    default: {}
  release:
    description: Release id for C(active) and C(failed) (the RV(release_id) that C(prepared) returned).
    type: str
  error:
    description: Why the release failed, recorded by C(failed).
    type: str
  keep:
    description: Releases left after C(active) prunes, the current and the previous one included (at least 2).
    type: int
    default: 5
  owner:
    description: Owner (name or uid) of the directories and files created. Default the user running the module.
    type: str
  group:
    description: Group (name or gid) of the directories and files created.
    type: str
author: Keelson developers
"""

EXAMPLES = r"""
- name: Prepare the release
  keelson_release:
    project: keelson-app-blue
    files:
      compose.yaml: "{{ lookup('ansible.builtin.template', 'compose.yaml.j2') }}"
    images:
      - ref: keelson-lab/app:v1
        id: sha256:0123abcd...
    meta:
      git_commit: "{{ git_commit }}"
      deployed_by: "{{ lookup('ansible.builtin.env', 'USER') }}"
  register: release

- name: Activate it once the containers are healthy
  keelson_release:
    project: keelson-app-blue
    state: active
    release: "{{ release.release_id }}"
    keep: 5

- name: Roll back to a named release
  keelson_release:
    project: keelson-app-blue
    state: active
    release: 20260509T073525Z-1a2b3c4d

- name: Record a failed deploy (current is not moved)
  keelson_release:
    project: keelson-app-blue
    state: failed
    release: "{{ release.release_id }}"
    error: containers did not become healthy

- name: Show the releases
  keelson_release:
    project: keelson-app-blue
    state: list
"""

RETURN = r"""
release_id:
  description: The release prepared, activated or marked failed.
  type: str
  returned: state is prepared, active or failed
  sample: 20260509T073525Z-1a2b3c4d
release_dir:
  description: Absolute path of that release's directory (the compose project_src).
  type: str
  returned: state is prepared, active or failed
config_hash:
  description: Full sha256 config hash of the input.
  type: str
  returned: state is prepared
new:
  description: Whether C(prepared) created a new release (false when one with the same hash existed).
  type: bool
  returned: state is prepared
result:
  description: The release's recorded result (for a reused release, its result before this run).
  type: str
  returned: state is prepared or failed
repaired:
  description: Files of a reused release that were rewritten or removed to match the input.
  type: list
  elements: str
  returned: state is prepared
cleaned:
  description: Incomplete entries of C(releases/) (no C(release.json)) that were removed.
  type: list
  elements: str
  returned: state is prepared or active
current:
  description: Release id C(current) points at (after the run for C(active)), or null.
  type: str
  returned: always
previous:
  description: Release that was current before this one was activated, or null.
  type: str
  returned: state is active
pruned:
  description: Releases removed because they were beyond O(keep).
  type: list
  elements: str
  returned: state is active
releases:
  description: Releases newest first, each with C(id), C(created), C(activated), C(result), C(images),
    C(config_hash), C(previous), C(error), C(current) (bool) and C(meta) (the other keys of its record).
  type: list
  elements: dict
  returned: state is list
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.keelson_release import (
    ReleaseError,
    Releases,
    check_keep,
    parse_mode,
    resolve_gid,
    resolve_uid,
)

ARGUMENT_SPEC = {
    "project": {"type": "str", "required": True},
    "root": {"type": "path", "default": "/opt/keelson"},
    "state": {"type": "str", "choices": ["prepared", "active", "failed", "list"], "default": "prepared"},
    "files": {"type": "dict"},
    "file_mode": {"type": "raw", "default": "0640"},
    "images": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": {"ref": {"type": "str", "required": True}, "id": {"type": "str", "required": True}},
    },
    "meta": {"type": "dict", "default": {}},
    "release": {"type": "str"},
    "error": {"type": "str"},
    "keep": {"type": "int", "default": 5},
    "owner": {"type": "str"},
    "group": {"type": "str"},
}


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_if=[
            ("state", "prepared", ["files"]),
            ("state", "active", ["release"]),
            ("state", "failed", ["release"]),
        ],
        supports_check_mode=True,
    )
    p = module.params
    try:
        owner = [None, None]
        for index, (resolve, value) in enumerate(((resolve_uid, p["owner"]), (resolve_gid, p["group"]))):
            try:
                owner[index] = resolve(value)
            except ReleaseError as exc:
                if not module.check_mode:
                    raise
                module.warn(f"{exc}; check mode goes on without it")  # an earlier task would create it
        check_keep(p["keep"])
        releases = Releases(
            p["project"],
            p["root"],
            file_mode=parse_mode(p["file_mode"]),
            uid=owner[0],
            gid=owner[1],
            check_mode=module.check_mode,
        )
        try:
            if p["state"] == "prepared":
                result = releases.prepare(p["files"], p["images"], p["meta"])
            elif p["state"] == "active":
                result = releases.activate(p["release"], p["keep"], p["meta"])
            elif p["state"] == "failed":
                result = releases.fail(p["release"], p["error"], p["meta"])
            else:
                result = releases.list()
        finally:
            for warning in releases.warnings:
                module.warn(warning)
    except ReleaseError as exc:
        module.fail_json(msg=str(exc))
    except PermissionError as exc:
        module.fail_json(
            msg=f"{p['project']}: state={p['state']} failed: {exc} (run the task with become: true, "
            f"or point root at a directory this user can write)"
        )
    except OSError as exc:
        module.fail_json(msg=f"{p['project']}: state={p['state']} failed: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
