"""Behaviour of role node_exporter on a converged host: scrape it from inside the host."""

import re

import pytest

URL = "http://127.0.0.1:9100/metrics"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
PROM_FILE = f"{TEXTFILE_DIR}/molecule_test.prom"


def scrape(host):
    return host.check_output(f"curl -fsS --max-time 5 {URL}")


def test_service_enabled_and_running(host):
    svc = host.service("prometheus-node-exporter")
    assert svc.is_enabled
    assert svc.is_running


def test_listens_on_all_addresses_port_9100(host):
    assert host.socket("tcp://0.0.0.0:9100").is_listening


def test_metrics_answer_with_node_metrics(host):
    metrics = scrape(host)
    assert re.search(r"^node_uname_info\{", metrics, re.M)
    assert re.search(r"^node_load1 ", metrics, re.M)
    assert re.search(r"^node_memory_MemTotal_bytes ", metrics, re.M)


def test_arguments_are_the_converged_ones(host):
    args = host.file("/etc/default/prometheus-node-exporter").content_string
    assert "--web.listen-address=0.0.0.0:9100" in args
    assert f"--collector.textfile.directory={TEXTFILE_DIR}" in args
    # The running process got exactly these flags.
    pid = host.check_output("systemctl show -p MainPID --value prometheus-node-exporter")
    cmdline = host.check_output(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    assert "--no-collector.wifi" in cmdline
    assert "--collector.processes" in cmdline


def test_collector_switches_take_effect(host):
    metrics = scrape(host)
    enabled = dict(re.findall(r'^node_scrape_collector_success\{collector="([a-z_]+)"\} (\d)', metrics, re.M))
    assert "processes" in enabled  # off by default, turned on
    assert "wifi" not in enabled  # on by default, turned off
    assert "textfile" in enabled


def test_textfile_directory(host):
    d = host.file(TEXTFILE_DIR)
    assert d.is_directory
    assert d.user == "root"
    assert d.mode == 0o755


@pytest.fixture
def prom_file(host):
    # Written the way a job should: a temporary file, then an atomic rename.
    host.check_output(
        f"printf '# HELP keelson_molecule_test A test metric.\\n# TYPE keelson_molecule_test gauge\\n"
        f'keelson_molecule_test{{source="molecule"}} 42\\n\' > {PROM_FILE}.tmp && mv {PROM_FILE}.tmp {PROM_FILE}'
    )
    yield PROM_FILE
    host.run(f"rm -f {PROM_FILE}")


def test_textfile_metrics_show_up(host, prom_file):
    metrics = scrape(host)
    assert re.search(r'^keelson_molecule_test\{source="molecule"\} 42$', metrics, re.M), metrics[-2000:]
    # and the textfile collector reports no error for it
    assert re.search(r"^node_textfile_scrape_error 0$", metrics, re.M)


def test_bad_flag_is_refused_by_the_validation(host):
    # The same check the role runs before it replaces the file: an unknown flag fails.
    result = host.run("prometheus-node-exporter --collector.no-such-collector --help")
    assert result.rc != 0
