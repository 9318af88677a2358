"""Push an OCI artifact to Berth with oras (the PyPI client of the ORAS project) as a
user allowed to push (Basic credentials), then pull it through Docker's token flow as
one who may only pull. (A refused push is not tried here: oras-py retries it with
growing pauses for a minute; docker, podman and skopeo check refusals.)

Usage: oras_check.py HOST:PORT REPO PUSHER PUSHER_PASSWORD PULLER PULLER_PASSWORD
"""

import os
import sys
import tempfile

import oras.client


def client(host, user, password, auth_backend):
    c = oras.client.OrasClient(hostname=host, insecure=True, auth_backend=auth_backend)
    c.login(username=user, password=password, hostname=host, tls_verify=False)
    return c


def main(host, repo, pusher, pusher_pw, puller, puller_pw):
    work = tempfile.mkdtemp()
    path = os.path.join(work, "notes.txt")
    with open(path, "w") as f:
        f.write(f"oras artifact for {repo}\n")
    target = f"{host}/{repo}:v1"
    os.chdir(work)
    # The pusher sends Basic credentials straight to /v2/ (oras-py's token backend
    # reuses a pull-only token after a 401 insufficient_scope instead of asking for a
    # push token, so it pushes only to registries whose tokens carry more than asked).
    client(host, pusher, pusher_pw, "basic").push(files=["notes.txt"], target=target)
    print("pushed", target)
    out = os.path.join(work, "out")
    reader = client(host, puller, puller_pw, "token")
    files = reader.pull(target=target, outdir=out)
    got = open(files[0]).read()
    assert got == f"oras artifact for {repo}\n", got
    print("pulled", files)
    print("oras: all checks passed")


if __name__ == "__main__":
    main(*sys.argv[1:7])
