"""An external accounting database whose password lives in AWS Secrets Manager (moto)."""

from __future__ import annotations

import json

from tests.aws.conftest import Aws

PASSWORD = "Stored-in-secrets-manager-42"


def _with_database(aws: Aws, name: str, secret: str) -> str:
    path = aws.spec(name, static=1, dynamic=0)
    doc = json.loads(path.read_text())
    doc["accounting"] = {"database": {"host": "db.internal", "password_secret": secret}}
    path.write_text(json.dumps(doc))
    return str(path)


def test_the_password_is_read_from_secrets_manager_into_slurmdbd_conf_only(aws: Aws) -> None:
    aws.client("secretsmanager").create_secret(Name="ck-slurmdb", SecretString=PASSWORD)
    done = aws.run("up", "-f", _with_database(aws, "aws-db", "aws-secretsmanager:ck-slurmdb"),
                   "--no-configure")  # fmt: skip
    assert PASSWORD not in done.stdout + done.stderr
    keys = aws.home / "clusters" / "aws-db" / "keys"
    conf = keys / "slurmdbd.conf"
    assert f"StoragePass={PASSWORD}\n" in conf.read_text()
    assert "StorageHost=db.internal\n" in conf.read_text()
    assert conf.stat().st_mode & 0o777 == 0o600
    user_data = [p for p in (aws.home / "clusters" / "aws-db").rglob("*") if p.is_file()
                 and p.parent != keys and PASSWORD in p.read_text(errors="replace")]  # fmt: skip
    assert user_data == []  # not in user-data, the state or any rendered file
    aws.run("down", "aws-db")
    assert aws.tagged("aws-db") == {}


def test_a_missing_secret_stops_up_before_anything_is_made(aws: Aws) -> None:
    done = aws.run("up", "-f", _with_database(aws, "aws-nodb", "aws-secretsmanager:nope"),
                   "--no-configure", check=False)  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "secretsmanager GetSecretValue" in last and "ResourceNotFoundException" in last
    assert "accounting.database.password_secret" in last
    assert [x for x in done.stderr.splitlines() if x.startswith("error:")] == [last]
    assert aws.tagged("aws-nodb") == {}
    aws.run("down", "aws-nodb")
