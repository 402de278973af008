"""The cluster's AWS services beyond the network: IAM roles and instance profiles for the
head and the compute nodes, the checkpoint bucket, and the SQS queue with the EventBridge rules
that bring Spot interruption events to it.
"""

from __future__ import annotations

import json
from typing import Any

from clusterkit.providers.aws import names, policies
from clusterkit.providers.aws.errors import aws_call
from clusterkit.providers.aws.recorded import Recorded

CHECKPOINT_EXPIRY_DAYS = 30


class ServiceResources(Recorded):
    """The IAM, S3, SQS and EventBridge resource methods of ``ClusterResources``."""

    def scope(self) -> policies.Scope:
        return policies.Scope(
            self.name, self.aws.region, self.aws.account, self.bucket_name(),
            own_bucket=self.own_bucket_name(), topic=self.spec.notify.sns_topic_arn,
        )  # fmt: skip

    def iam(self) -> None:
        """A role and instance profile each for the head and for compute nodes."""
        scope = self.scope()
        for role, doc in (
            ("compute", policies.compute_policy(scope)),
            ("head", policies.head_policy(scope)),
        ):
            self._role(role, doc)

    def _role(self, role: str, policy: str) -> None:
        key = f"{role}_profile"
        if key in self.done:
            return
        iam = self.aws.client("iam")
        name = names.role_name(self.name, role)
        path = names.iam_path(self.name)
        tags = names.tags(self.name, role=role)
        self._create(
            "iam CreateRole",
            name,
            iam.create_role,
            "EntityAlreadyExists",
            RoleName=name,
            Path=path,
            Tags=tags,
            AssumeRolePolicyDocument=json.dumps(policies.EC2_TRUST),
            Description=f"clusterkit cluster {self.name}: {role} nodes",
        )
        aws_call(
            "iam PutRolePolicy",
            name,
            iam.put_role_policy,
            RoleName=name,
            PolicyName=name,
            PolicyDocument=policy,
        )
        self._create(
            "iam CreateInstanceProfile",
            name,
            iam.create_instance_profile,
            "EntityAlreadyExists",
            InstanceProfileName=name,
            Path=path,
            Tags=tags,
        )
        self._create(
            "iam AddRoleToInstanceProfile",
            name,
            iam.add_role_to_instance_profile,
            "LimitExceeded",
            InstanceProfileName=name,
            RoleName=name,
        )
        self._set(key, name)

    # -- checkpoints and interruption events -----------------------------------------------

    def bucket_name(self) -> str:
        """Where checkpoints go: the spec's bucket, else the cluster's own."""
        return self.spec.aws.checkpoint_bucket or self.own_bucket_name()

    def bucket(self) -> None:
        """The cluster's own bucket, private and encrypted: its boot material (nodes' names,
        host keys), and its checkpoints unless the spec names a bucket for them, which
        expire with a lifecycle rule."""
        if "bucket" in self.done:
            return
        s3 = self.aws.client("s3")
        name = self.own_bucket_name()
        params: dict[str, Any] = {"Bucket": name}
        if self.aws.region != "us-east-1":  # us-east-1 refuses its own name as a constraint
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.aws.region}
        self._create("s3 CreateBucket", name, s3.create_bucket, "BucketAlreadyOwnedByYou", **params)
        aws_call(
            "s3 PutBucketTagging",
            name,
            s3.put_bucket_tagging,
            Bucket=name,
            Tagging={"TagSet": names.tags(self.name)},
        )
        aws_call(
            "s3 PutPublicAccessBlock",
            name,
            s3.put_public_access_block,
            Bucket=name,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        aws_call(
            "s3 PutBucketEncryption",
            name,
            s3.put_bucket_encryption,
            Bucket=name,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"},
                        "BucketKeyEnabled": True,
                    }
                ]
            },
        )
        aws_call(
            "s3 PutBucketLifecycleConfiguration",
            name,
            s3.put_bucket_lifecycle_configuration,
            Bucket=name,
            LifecycleConfiguration={
                "Rules": [
                    {
                        "ID": "clusterkit-checkpoints",
                        "Status": "Enabled",
                        "Filter": {"Prefix": names.checkpoint_prefix(self.name)},
                        "Expiration": {"Days": CHECKPOINT_EXPIRY_DAYS},
                        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                    }
                ]
            },
        )
        self._set("bucket", name)

    def queue(self) -> str:
        if "queue_url" in self.done:
            return self.record["queue_url"]
        sqs = self.aws.client("sqs")
        name = names.queue_name(self.name)
        url = aws_call(
            "sqs CreateQueue",
            name,
            sqs.create_queue,
            QueueName=name,
            tags=names.tag_dict(self.name),
            Attributes={
                "Policy": policies.queue_policy(self.scope()),
                "SqsManagedSseEnabled": "true",
                "MessageRetentionPeriod": "3600",  # a notice is worth two minutes
            },
        )["QueueUrl"]
        return self._set("queue_url", str(url))

    def event_rules(self) -> None:
        if "event_rules" in self.done:
            return
        events = self.aws.client("events")
        queue_arn = self.scope().queue
        for kind, detail_type in names.EVENT_RULES.items():
            rule = names.rule_name(self.name, kind)
            aws_call(
                "events PutRule",
                rule,
                events.put_rule,
                Name=rule,
                EventPattern=policies.event_pattern(detail_type),
                State="ENABLED",
                Description=f"clusterkit {self.name}: {detail_type}",
                Tags=names.tags(self.name),
            )
            aws_call(
                "events PutTargets",
                rule,
                events.put_targets,
                Rule=rule,
                Targets=[{"Id": "queue", "Arn": queue_arn}],
            )
        self._set("event_rules", ",".join(names.EVENT_RULES))
