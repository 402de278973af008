"""Pack tasks in containers, without a cluster: finding the image, the head's scripts that
unpack it and move it into the pack (run here, with stand-ins for sbatch and crun), and the
OCI config each task gets."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from clusterkit.nodetools import packcontainer
from clusterkit.nodetools.packcontainer import Container, container_env, oci_config
from clusterkit.nodetools.packdir import PackError
from clusterkit.pack import submit_script, upload
from clusterkit.packimage import ImageSource, find, stage_script, stream
from tests.rootfs import build_image, build_rootfs

# ---------------------------------------------------------------------------------------------
# finding the image


def test_a_directory_or_tar_here_is_sent_and_anything_else_is_on_the_cluster(
    tmp_path: Path,
) -> None:
    rootfs = build_rootfs(tmp_path / "rootfs", ("sh",))
    assert find(str(rootfs)) == ImageSource(str(rootfs), rootfs, directory=True)
    gz = build_image(tmp_path / "image.tar.gz", ("sh",))
    assert find(str(gz)).compression == "--gzip"
    plain = tmp_path / "image.tar"
    with tarfile.open(plain, "w") as tar:
        tar.add(rootfs, arcname=".")
    assert find(str(plain)) == ImageSource(str(plain), plain)
    assert find("images/debian.tar") == ImageSource("images/debian.tar")  # not here


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "not a root file system (no bin/ or usr/ at its top)"),
        (lambda p: p.write_text("hello"), "neither a directory nor a tar archive"),
    ],
)
def test_an_image_that_is_no_root_file_system_is_refused(
    tmp_path: Path, make: object, message: str
) -> None:
    path = tmp_path / "image"
    make(path)  # type: ignore[operator]
    with pytest.raises(PackError, match=re.escape(f"--container {path}: {message}")):
        find(str(path))


# ---------------------------------------------------------------------------------------------
# the head's scripts, run here


def head(tmp_path: Path) -> dict[str, str]:
    """The environment of a stand-in head: a home, and crun and sbatch that only say so."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "crun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncase "$*" in *refuse*) echo refused >&2; exit 1;; esac\n'
        f"echo 42 | tee -a {tmp_path}/sbatch.log\n"
    )
    (bin_dir / "scancel").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home)}


def run_stage(
    tmp_path: Path, source: ImageSource, chdir: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    with stream(source) as fh:
        return subprocess.run(
            ["bash", "-c", stage_script("p", source, chdir)],
            stdin=fh if fh is not None else subprocess.DEVNULL,
            env=head(tmp_path), capture_output=True, check=False,
        )  # fmt: skip


def test_the_image_is_unpacked_with_its_mount_points_and_moved_into_the_pack(
    tmp_path: Path,
) -> None:
    source = find(str(build_image(tmp_path / "image.tgz")))
    staged = run_stage(tmp_path, source, chdir="/data/in")
    assert staged.returncode == 0, staged.stderr
    home = tmp_path / "home"
    rootfs = home / "ck-pack" / ".staging" / "p" / "rootfs"
    assert (rootfs / "bin" / "sh").is_file()
    for point in ("proc", "dev", "sys", "tmp"):
        assert (rootfs / point).is_dir()
    assert (rootfs / "etc" / "hosts").is_file()
    assert (rootfs / str(home / "ck-pack" / "p").lstrip("/")).is_dir()  # the pack's own path
    assert (rootfs / "data" / "in").is_dir()  # --chdir

    files = {"runs/0.sh": b"#!/bin/bash\n"}
    script = submit_script("p", [0], fresh=True, image=True)
    done = subprocess.run(["bash", "-c", script], input=upload(files, fresh=True).encode(),
                          env=head(tmp_path), capture_output=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (home / "ck-pack" / "p" / "image" / "rootfs" / "bin" / "sh").is_file()
    assert not (home / "ck-pack" / ".staging").exists()


def test_a_directory_is_streamed_without_its_device_files(tmp_path: Path) -> None:
    rootfs = build_rootfs(tmp_path / "rootfs", ("sh",))
    (rootfs / "dev").mkdir()
    (rootfs / "dev" / "marker").write_text("a device file stands here")
    staged = run_stage(tmp_path, find(str(rootfs)))
    assert staged.returncode == 0, staged.stderr
    unpacked = tmp_path / "home" / "ck-pack" / ".staging" / "p" / "rootfs"
    assert (unpacked / "bin" / "sh").is_file()
    assert list((unpacked / "dev").iterdir()) == []


def test_an_image_on_the_cluster_is_unpacked_there(tmp_path: Path) -> None:
    env = head(tmp_path)
    build_image(Path(env["HOME"]) / "debian.tar.gz", ("sh",))
    staged = run_stage(tmp_path, ImageSource("debian.tar.gz"))  # relative to the home
    assert staged.returncode == 0, staged.stderr
    assert (tmp_path / "home" / "ck-pack" / ".staging" / "p" / "rootfs" / "bin" / "sh").exists()


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("missing.tar", b"--container missing.tar: no such directory or tar archive"),
        ("notroot.tar", b"--container notroot.tar: not a root file system"),
    ],
)
def test_a_bad_image_on_the_cluster_is_one_line_and_leaves_nothing(
    tmp_path: Path, image: str, message: bytes
) -> None:
    env = head(tmp_path)
    with tarfile.open(Path(env["HOME"]) / "notroot.tar", "w") as tar:
        info = tarfile.TarInfo("README")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    staged = run_stage(tmp_path, ImageSource(image))
    assert staged.returncode != 0
    assert message in staged.stderr
    assert not (tmp_path / "home" / "ck-pack" / ".staging" / "p").exists()


def test_a_refused_submission_removes_the_pack_and_its_image(tmp_path: Path) -> None:
    assert run_stage(tmp_path, find(str(build_image(tmp_path / "i.tgz", ("sh",))))).returncode == 0
    files = {"runs/0.sh": b"#!/bin/bash\n", "runs/1.sh": b"#!/bin/bash\n# refuse\n"}
    script = submit_script("p", [0, 1], fresh=True, image=True).replace(
        "runs/1.sh > ", "runs/1.sh refuse > "
    )
    done = subprocess.run(["bash", "-c", script], input=upload(files, fresh=True).encode(),
                          env=head(tmp_path), capture_output=True, check=False)  # fmt: skip
    assert done.returncode != 0
    assert b"refused" in done.stderr
    assert not (tmp_path / "home" / "ck-pack" / "p").exists()
    assert not (tmp_path / "home" / "ck-pack" / ".staging" / "p").exists()


def test_a_failed_unpack_leaves_no_pack(tmp_path: Path) -> None:
    """Anything that fails before the arrays are in leaves nothing (here: a bad tarball)."""
    done = subprocess.run(["bash", "-c", submit_script("p", [0], fresh=True)],
                          input=b"bm90IGEgdGFyYmFsbAo=\n", env=head(tmp_path),
                          capture_output=True, check=False)  # fmt: skip
    assert done.returncode != 0
    assert not (tmp_path / "home" / "ck-pack" / "p").exists()


def test_a_pack_that_exists_is_kept_when_another_of_its_name_is_refused(tmp_path: Path) -> None:
    pack = tmp_path / "home" / "ck-pack" / "p"
    head(tmp_path)
    pack.mkdir(parents=True)
    (pack / "pack.json").write_text("{}")
    staged = run_stage(tmp_path, find(str(build_image(tmp_path / "i.tgz", ("sh",)))))
    assert b"pack p already exists; choose another --name" in staged.stderr
    done = subprocess.run(["bash", "-c", submit_script("p", [0], fresh=True)],
                          input=upload({}, fresh=True).encode(), env=head(tmp_path),
                          capture_output=True, check=False)  # fmt: skip
    assert done.returncode == 3
    assert (pack / "pack.json").read_text() == "{}"


# ---------------------------------------------------------------------------------------------
# each task's container


def test_the_config_maps_only_the_users_own_ids_and_binds_only_the_pack_writable() -> None:
    config = oci_config(
        rootfs="/home/u/ck-pack/p/image/rootfs", args=["/bin/sh", "-c", "true"], env=["A=1"],
        cwd="/data", uid=2001, gid=2002, writable=["/home/u/ck-pack/p"], readable=["/data"],
        devices=[],
    )  # fmt: skip
    linux = config["linux"]
    assert linux["uidMappings"] == [{"containerID": 2001, "hostID": 2001, "size": 1}]
    assert linux["gidMappings"] == [{"containerID": 2002, "hostID": 2002, "size": 1}]
    assert {n["type"] for n in linux["namespaces"]} == {"user", "mount", "pid", "ipc"}
    assert config["root"] == {"path": "/home/u/ck-pack/p/image/rootfs", "readonly": True}
    process = config["process"]
    assert process["user"] == {"uid": 2001, "gid": 2002}
    assert process["noNewPrivileges"] is True
    assert all(caps == [] for caps in process["capabilities"].values())
    writable = [m["destination"] for m in config["mounts"]
                if m["type"] == "none" and "rw" in m["options"]]  # fmt: skip
    assert writable == ["/home/u/ck-pack/p"]
    tmpfs = {m["destination"] for m in config["mounts"] if m["type"] == "tmpfs"}
    assert tmpfs == {"/dev", "/dev/shm", "/tmp"}
    json.dumps(config)  # what crun reads


def test_the_task_sees_slurm_and_pack_variables_but_not_the_nodes_paths() -> None:
    env = container_env({
        "SLURM_JOB_ID": "7", "CK_PACK_TASK": "3", "LANG": "C.UTF-8", "PATH": "/opt/x/bin",
        "LD_LIBRARY_PATH": "/opt/x/lib", "PYTHONPATH": "/opt/x/py", "HOME": "/home/u",
    }, "/tmp")  # fmt: skip
    values = dict(e.split("=", 1) for e in env)
    assert values["SLURM_JOB_ID"] == "7" and values["CK_PACK_TASK"] == "3"
    assert values["PATH"] == packcontainer.PATH and values["HOME"] == "/tmp"
    assert "LD_LIBRARY_PATH" not in values and "PYTHONPATH" not in values


@pytest.mark.parametrize(("code", "task"), [(0, 0), (3, 3), (137, -9), (143, -15), (255, 255)])
def test_cruns_exit_status_is_the_tasks(code: int, task: int) -> None:
    assert packcontainer.Container.returncode(code) == task


def test_each_task_gets_its_config_and_a_crun_run_of_its_own(tmp_path: Path) -> None:
    pack = tmp_path / "pack"
    (pack / "image" / "rootfs").mkdir(parents=True)
    env = {"PATH": "/usr/bin:/bin", "CK_PACK_TASK": "5"}
    box = Container(pack, "image/rootfs", None, tmp_path / "scratch", env)
    first = box.argv(["echo", "hi"], env)
    config = json.loads((tmp_path / "scratch" / "bundle" / "config.json").read_text())
    assert config["process"]["args"] == ["echo", "hi"]
    assert "CK_PACK_TASK=5" in config["process"]["env"]
    assert config["process"]["cwd"] == str(pack)  # the pack's directory, without --chdir
    second = box.argv(["/bin/sh", "-c", "exit 3"], {**env, "CK_PACK_TASK": "6"})
    assert first[-1] != second[-1]  # a container name per task
    assert second[second.index("--cgroup-manager=disabled") + 1] == "run"


def test_a_missing_image_fails_the_task_with_the_reason(tmp_path: Path) -> None:
    box = Container(tmp_path, "image/rootfs", None, tmp_path / "scratch", {"PATH": "/bin"})
    with pytest.raises(FileNotFoundError, match="the pack's image is missing"):
        box.argv(["true"], {})


@pytest.mark.parametrize(
    ("program", "handles"),
    [
        ("import signal, time; signal.signal(signal.SIGTERM, lambda *a: None); time.sleep(9)",
         True),
        ("import time; time.sleep(9)", False),
    ],
)  # fmt: skip
def test_only_a_pid_1_with_a_sigterm_handler_is_given_its_grace(
    tmp_path: Path, program: str, handles: bool
) -> None:
    pack = tmp_path / "pack"
    (pack / "image" / "rootfs").mkdir(parents=True)
    box = Container(pack, "image/rootfs", None, tmp_path / "scratch", {"PATH": "/bin"})
    box.argv(["true"], {})
    task = subprocess.Popen([sys.executable, "-c", program])
    try:
        box.pid_file.write_text(f"{task.pid}\n")
        deadline = time.monotonic() + 10  # until Python has started and set its handler
        while box.handles_sigterm() is not handles and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert box.handles_sigterm() is handles
        box.kill(signal.SIGKILL)
        assert task.wait(timeout=5) == -signal.SIGKILL
    finally:
        task.kill()
