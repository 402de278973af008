"""``clusterkit image``: bake, list and delete the node images an aws cluster boots from."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
from rich.table import Table

from clusterkit.cli import console
from clusterkit.cli.console import StepProgress, output_option
from clusterkit.providers.aws import image as lib
from clusterkit.providers.aws import imagebuild, imagerecipe
from clusterkit.spec import load_spec

STEP_LABELS = {
    "builder": "Builder instance (Debian 12, no inbound traffic)",
    "bake": "Recipe baked on the builder (packages; a few minutes)",
    "image": "Image made from the builder's disk",
    "clean up": "Builder and its security group deleted",
}

region_option = click.option(
    "--region", default=None, metavar="REGION",
    help="AWS region (default: the spec's aws.region, else the AWS profile's).",
)  # fmt: skip


@click.group("image")
def image() -> None:
    """Node images for aws clusters.

    \b
    A configured aws cluster boots from an image that holds Slurm, munge, NFS, sshfs, OpenMPI,
    python3-boto3 and the AWS CLI. Bake one per region, then name it in the spec:
      clusterkit image build -f cluster.yaml     bake (about 5 minutes), prints ami-...
      aws: {image_id: ami-...}                   in cluster.yaml
      clusterkit image list                      clusterkit's images in the region
      clusterkit image delete ami-...            deregister one and delete its snapshots

    The recipe is images/aws/bake.yml (the playbooks' common role in bake mode);
    it also runs by hand on any Debian 12 host: ansible-playbook -c local -i localhost, bake.yml
    """


@image.command("build")
@click.option(
    "-f", "--file", "path", type=click.Path(path_type=Path), default=None,
    help="A cluster spec: its aws.region and first aws.subnet_ids entry are used.",
)  # fmt: skip
@region_option
@click.option("--base-image", default=None, metavar="AMI",
              help="Image to start from (default: Debian 12's latest, from AWS's public "
              "SSM parameter).")  # fmt: skip
@click.option("--instance-type", default=imagebuild.DEFAULT_INSTANCE_TYPE, show_default=True,
              help="The builder's instance type (x86_64).")  # fmt: skip
@click.option("--subnet-id", default=None, metavar="SUBNET",
              help="The builder's subnet; it must reach the internet (default: the region's "
              "default subnet).")  # fmt: skip
@click.option("--name", default=None, help="Image name (default: clusterkit-node-<UTC time>).")
@click.option("--timeout", type=click.FloatRange(min=1), default=imagebuild.DEFAULT_TIMEOUT,
              show_default=True, metavar="SECONDS",
              help="Give up (and delete the builder) if the bake takes longer.")  # fmt: skip
@output_option
def build(  # noqa: PLR0917 - one parameter per option, as click passes them
    path: Path | None,
    region: str | None,
    base_image: str | None,
    instance_type: str,
    subnet_id: str | None,
    name: str | None,
    timeout: float,
    output: str,
) -> None:
    """Bake a node image: a builder instance runs the recipe and powers off, its disk
    becomes the image, and the builder is deleted whatever happens.

    The builder has no key pair, no instance role and a security group that admits
    nothing; the recipe leaves no key or secret in the image.
    """
    spec = load_spec(path) if path is not None else None
    aws = lib.session(region, spec)
    request = imagebuild.BuildRequest(
        name=name,
        base_image=base_image,
        instance_type=instance_type,
        subnet_id=imagebuild.builder_subnet(subnet_id, spec),
        timeout=timeout,
    )
    console.err.print(
        f"Baking a clusterkit node image in {aws.region} (recipe {imagerecipe.recipe_id()})"
    )
    built = imagebuild.build(aws, request, StepProgress(STEP_LABELS))
    if output == "json":
        click.echo(json.dumps(dataclasses.asdict(built)))
        return
    console.err.print(
        f"[green]Image {built.image_id}[/] ({built.name}) is ready in {built.seconds:.0f}s."
    )
    console.out.print(
        f"\nNext: set [bold]aws: {{image_id: {built.image_id}}}[/] in the cluster spec"
    )


@image.command("list")
@region_option
@output_option
def list_(region: str | None, output: str) -> None:
    """List this account's clusterkit node images in the region, newest first."""
    images = lib.list_images(lib.session(region))
    if output == "json":
        click.echo(json.dumps([dataclasses.asdict(i) for i in images]))
        return
    if not images:
        console.err.print(
            "no clusterkit images in this region (`clusterkit image build` makes one)"
        )
        return
    table = Table("IMAGE", "NAME", "STATE", "CREATED", "RECIPE", "BASE", box=None)
    for i in images:
        table.add_row(i.image_id, i.name, i.state, i.created, i.recipe, i.base_image)
    console.out.print(table)


@image.command("delete")
@click.argument("image_id", metavar="IMAGE")
@region_option
def delete(image_id: str, region: str | None) -> None:
    """Deregister a clusterkit image and delete its snapshots (clusters using it keep
    running; new nodes can no longer boot from it)."""
    snapshots = lib.delete_image(lib.session(region), image_id)
    console.err.print(f"[green]✓[/] {image_id} deregistered, {len(snapshots)} snapshot(s) deleted")


@image.command("clean")
@region_option
def clean(region: str | None) -> None:
    """Delete what an interrupted build left behind: builder instances and their groups."""
    removed = lib.clean(lib.session(region))
    console.err.print(f"[green]✓[/] removed {len(removed)} resource(s){': ' if removed else ''}"
              + ", ".join(removed))  # fmt: skip
