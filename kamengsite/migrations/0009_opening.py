"""Opening sub-sites and binding domains: applications (requested → approved / rejected) and domain claims."""
import datetime

from peewee import (BigIntegerField, BooleanField, CharField, DateTimeField, ForeignKeyField, IntegerField, Model,
                    TextField)


def up(migrator, db):
    now = datetime.datetime.utcnow

    class Base(Model):
        class Meta:
            database = db

    class Site(Base):
        class Meta:
            table_name = "site"

    class SiteApplication(Base):
        slug = CharField(max_length=32)
        # The slug while the application holds it (requested, approving, approved); NULL once
        # rejected. Unique: two applications can never hold one name (NULLs never clash).
        active_slug = CharField(max_length=32, null=True, unique=True)
        # One per submitted form: a double submit meets the first row here.
        submit_key = CharField(max_length=64, unique=True)
        name = CharField(max_length=60)
        template = CharField(max_length=32)
        level = CharField(max_length=32)
        parent = ForeignKeyField(Site, null=True, on_delete="RESTRICT", backref="+")
        contact = CharField(max_length=120)
        real_name = CharField(max_length=60, default="")
        business_info = TextField(default="")
        username = CharField(max_length=32)
        password_hash = CharField(max_length=255)
        member_id = IntegerField(null=True)
        self_service = BooleanField(default=False)
        fee_fen = BigIntegerField(default=0)
        status = CharField(max_length=16, default="requested")
        reason = TextField(default="")
        notice = CharField(max_length=120, default="")
        site = ForeignKeyField(Site, null=True, on_delete="SET NULL", backref="+")
        applicant_ip = CharField(max_length=45, default="")
        created_at = DateTimeField(default=now)
        decided_at = DateTimeField(null=True)

        class Meta:
            table_name = "site_application"
            indexes = ((("status", "created_at"), False),)

    class DomainClaim(Base):
        site = ForeignKeyField(Site, on_delete="CASCADE")
        domain = CharField(max_length=253)
        token = CharField(max_length=64)
        status = CharField(max_length=16, default="pending")
        method = CharField(max_length=8, default="")
        last_error = TextField(default="")
        created_at = DateTimeField(default=now)
        checked_at = DateTimeField(null=True)
        verified_at = DateTimeField(null=True)

        class Meta:
            table_name = "domain_claim"
            indexes = ((("site", "domain"), True), (("domain", "status"), False))

    db.create_tables([SiteApplication, DomainClaim])


def down(migrator, db):
    for table in ("domain_claim", "site_application"):
        db.execute_sql(f"DROP TABLE {table}")
