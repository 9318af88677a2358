"""Drive Berth's /api/v2.0 with Harbor's own Python client (harborapi, from PyPI),
unchanged: create a project, a user, a member, a robot; push with the robot; list
repositories and artifacts; read the audit logs; set and run a tag retention policy;
register an upstream registry (this Berth itself) and make a proxy-cache project of it.
Prints one line per check and
"harborapi: all checks passed" at the end; any failure raises.

Usage: harborapi_check.py API_URL REGISTRY_URL  (HARBOR_USER, HARBOR_PASSWORD set)
"""

import asyncio
import base64
import hashlib
import json
import os
import sys
import time
import urllib.request

from harborapi import HarborAsyncClient
from harborapi.models import (
    ProjectReq,
    ProjectMetadata,
    RobotCreate,
    RobotPermission,
    Access,
    UserCreationReq,
    Tag,
    RetentionPolicy,
    RetentionPolicyScope,
    RetentionRule,
    RetentionRuleTrigger,
    RetentionSelector,
    Registry,
    RegistryCredential,
    RegistryPing,
    RegistryUpdate,
)


def push_image(registry: str, user: str, secret: str, repo: str, tag: str) -> str:
    """Push a tiny image with plain HTTP (Basic credentials) and return its digest."""
    auth = "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()

    def req(method, path, data=None, headers=None):
        r = urllib.request.Request(registry + path, data=data, method=method)
        r.add_header("Authorization", auth)
        for k, v in (headers or {}).items():
            r.add_header(k, v)
        return urllib.request.urlopen(r)

    config = json.dumps({"architecture": "amd64", "os": "linux", "salt": f"{repo}:{tag}"}).encode()
    layer = f"layer of {repo}:{tag}".encode()
    descs = []
    for blob, mt in ((config, "application/vnd.oci.image.config.v1+json"), (layer, "application/vnd.oci.image.layer.v1.tar")):
        d = "sha256:" + hashlib.sha256(blob).hexdigest()
        resp = req("POST", f"/v2/{repo}/blobs/uploads/?digest={d}", blob, {"Content-Type": "application/octet-stream"})
        assert resp.status == 201, resp.status
        descs.append({"mediaType": mt, "digest": d, "size": len(blob)})
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": descs[0], "layers": [descs[1]]}).encode()
    resp = req("PUT", f"/v2/{repo}/manifests/{tag}", manifest, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert resp.status == 201, resp.status
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


async def main(api: str, registry: str) -> None:
    client = HarborAsyncClient(url=api, username=os.environ["HARBOR_USER"], secret=os.environ["HARBOR_PASSWORD"])

    assert (await client.ping()).strip() == "Pong"
    print("ping ok")
    info = await client.get_system_info()
    print("systeminfo", info.harbor_version)

    location = await client.create_project(ProjectReq(project_name="harbor-check", metadata=ProjectMetadata(public=False)))
    assert location.endswith("/projects/harbor-check"), location
    assert await client.project_exists("harbor-check")
    project = await client.get_project("harbor-check")
    assert project.name == "harbor-check" and project.metadata.public in ("false", False), project
    print("project ok", project.project_id)

    await client.create_user(UserCreationReq(username="carol", email="carol@example.org", realname="Carol", password="Passw0rdCarol"))
    users = await client.get_users()
    assert any(u.username == "carol" for u in users), users
    await client.add_project_member_user("harbor-check", "carol", 2)
    members = await client.get_project_members("harbor-check")
    carol = [m for m in members if m.entity_name == "carol"]
    assert carol and carol[0].role_id == 2, members
    print("member ok")

    created = await client.create_robot(RobotCreate(
        name="builder", description="ci", level="project", duration=-1, disable=False,
        permissions=[RobotPermission(kind="project", namespace="harbor-check", access=[
            Access(resource="repository", action="pull"), Access(resource="repository", action="push")])]))
    assert created.name == "robot$harbor-check+builder", created
    assert created.secret, created
    robots = await client.get_robots(query=f"Level=project,ProjectID={project.project_id}")
    assert any(r.id == created.id for r in robots), robots
    print("robot ok", created.name)

    digest = push_image(registry, created.name, created.secret, "harbor-check/app", "v1")
    repos = await client.get_repositories("harbor-check")
    assert [r.name for r in repos] == ["harbor-check/app"], repos
    artifacts = await client.get_artifacts("harbor-check", "app")
    assert artifacts and artifacts[0].digest == digest, artifacts
    assert artifacts[0].tags and artifacts[0].tags[0].name == "v1", artifacts[0]
    print("repositories and artifacts ok", digest)

    await client.create_artifact_tag("harbor-check", "app", digest, Tag(name="stable"))
    art = await client.get_artifact("harbor-check", "app", "stable")
    assert art.digest == digest
    await client.delete_artifact_tag("harbor-check", "app", digest, "stable")
    print("tags ok")

    deadline = time.time() + 10
    while True:
        logs = await client.get_audit_logs(page_size=100)
        ops = {(l.operation, l.resource_type) for l in logs}
        if ("push", "artifact") in ops and ("create", "project") in ops:
            break
        assert time.time() < deadline, ops
        await asyncio.sleep(0.2)
    project_logs = await client.get_project_logs("harbor-check", page_size=100)
    assert project_logs, "project logs are empty"
    print("audit logs ok", len(logs))

    stats = await client.get_statistics()
    assert stats.private_project_count >= 1, stats
    found = await client.search("harbor")
    assert found.project and found.project[0].name == "harbor-check", found
    print("statistics and search ok")

    # Tag retention: keep the newest v* of app; "old" goes.
    push_image(registry, created.name, created.secret, "harbor-check/app", "old")
    meta = await client.get_retention_metadata()
    assert any(t.rule_template == "latestPushedK" for t in meta.templates), meta
    rule = RetentionRule(
        disabled=False, action="retain", template="latestPushedK", params={"latestPushedK": 1},
        tag_selectors=[RetentionSelector(kind="doublestar", decoration="matches", pattern="v*", extras='{"untagged":false}')],
        scope_selectors={"repository": [RetentionSelector(kind="doublestar", decoration="repoMatches", pattern="**")]})
    location = await client.create_retention_policy(RetentionPolicy(
        algorithm="or", rules=[rule],
        trigger=RetentionRuleTrigger(kind="Schedule", settings={"cron": ""}, references={}),
        scope=RetentionPolicyScope(level="project", ref=project.project_id)))
    rid = await client.get_project_retention_id("harbor-check")
    assert location.endswith(f"/retentions/{rid}"), (location, rid)
    policy = await client.get_retention_policy(rid)
    assert policy.rules[0].template == "latestPushedK", policy
    # What a client reads it sends back unchanged.
    await client.update_retention_policy(rid, policy)
    await client.start_retention_execution(rid, dry_run=False)
    deadline = time.time() + 20
    while True:
        runs = await client.get_retention_executions(rid)
        if runs and runs[0].status != "Running":
            break
        assert time.time() < deadline, runs
        await asyncio.sleep(0.2)
    assert runs[0].status == "Succeed", runs
    tasks = await client.get_retention_tasks(rid, runs[0].id)
    assert [(t.repository, t.total, t.retained) for t in tasks] == [("harbor-check/app", 2, 1)], tasks
    log = await client.get_retention_execution_task_log(rid, runs[0].id, tasks[0].id)
    assert "deleted" in log and "(tags old)" in log, log
    tags = {t.name for a in await client.get_artifacts("harbor-check", "app") for t in (a.tags or [])}
    assert tags == {"v1"}, tags
    await client.delete_retention_policy(rid)
    print("retention ok")

    # Upstream registries and a proxy-cache project: this Berth registered as its own
    # upstream (token auth on its own host), its harbor-check/app pulled through it.
    assert "harbor" in await client.get_registry_adapters()
    user, secret = os.environ["HARBOR_USER"], os.environ["HARBOR_PASSWORD"]
    location = await client.create_registry(Registry(
        name="myself", type="harbor", url=registry, insecure=False,
        credential=RegistryCredential(type="basic", access_key=user, access_secret=secret)))
    reg_id = int(location.rstrip("/").rsplit("/", 1)[1])
    reg = await client.get_registry(reg_id)
    assert reg.name == "myself" and reg.status == "healthy", reg
    assert reg.credential.access_secret == "*****", reg.credential
    assert [r.id for r in await client.get_registries()] == [reg_id]
    await client.update_registry(reg_id, RegistryUpdate(description="this Berth", access_key=user, access_secret="*****"))
    assert (await client.get_registry(reg_id)).description == "this Berth"
    await client.check_registry_status(RegistryPing(id=reg_id))
    await client.create_project(ProjectReq(project_name="cache-check", registry_id=reg_id, metadata=ProjectMetadata(public=False)))
    cache = await client.get_project("cache-check")
    assert cache.registry_id == reg_id, cache
    req = urllib.request.Request(
        f"{registry}/v2/cache-check/harbor-check/app/manifests/v1",
        headers={"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode(),
                 "Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 200, r.status
    await client.delete_repository("cache-check", "harbor-check/app")
    await client.delete_project("cache-check")
    await client.delete_registry(reg_id)
    print("registries ok")

    await client.delete_robot(created.id)
    print("harborapi: all checks passed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
