"""Add an optional note to items, and an index on created (expand-only: v1 keeps working).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: no table rewrite, and v1's INSERTs (which omit it) still work.
    op.add_column("items", sa.Column("note", sa.Text(), nullable=True))
    # Both steps in one transaction, so a failure leaves 0001 intact.  On a large table the index would go in a
    # migration of its own with postgresql_concurrently=True inside op.get_context().autocommit_block().
    op.create_index("ix_items_created", "items", ["created"])


def downgrade() -> None:
    op.drop_index("ix_items_created", table_name="items")
    op.drop_column("items", "note")
