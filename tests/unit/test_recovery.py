"""Restarts that keep sessions, over the fake runtime (chaser/service/recovery.py): a clean exit
with CHASER_KEEP_VMS_ON_EXIT leaves running sessions running; the next start adopts what the
runtime kept, ends what it lost (failed, server_restart) and what it has nothing of (terminated,
server_restart), and hands back what no session wanted. With real VMs: tests/integration/test_adopt.py."""

from __future__ import annotations

from pathlib import Path

from chaser import errors
from chaser.runtime import VMSpec
from tests.support.fakes import FakeRuntime, FakeVM


def test_restart_adopts_kept_vms_and_ends_lost_ones(make_harness, tmp_path):
    first = make_harness(tmp_path, keep_vms_on_exit=True)
    kept, lost, nothing = (first.session()["id"] for _ in range(3))
    vms = {sid: first.vm(sid) for sid in (kept, lost, nothing)}
    first.close()  # a clean exit that keeps the VMs
    assert set(first.runtime.detached) == set(vms.values()) and not any(vm.stopped for vm in vms.values())

    runtime = FakeRuntime()
    runtime.left = {kept: vms[kept], lost: errors.VMCrashed("its VM (QEMU pid 1) exited while no server was running"),
                    "ses_nobody": FakeVM(VMSpec(image_disk=Path("/nowhere"), session_id="ses_nobody"))}
    second = make_harness(tmp_path, runtime=runtime)
    rows = {sid: second.client.get(f"/v1/sessions/{sid}").json() for sid in (kept, lost, nothing)}
    assert rows[kept]["status"] == "running" and second.vm(kept) is vms[kept]
    assert (rows[lost]["status"], rows[lost]["end_reason"]) == ("failed", "server_restart")
    assert (rows[nothing]["status"], rows[nothing]["end_reason"]) == ("terminated", "server_restart")
    events = second.client.get("/v1/audit/events", params={"resource_id": lost, "action": "session.failed"}).json()
    assert "exited while no server was running" in events["events"][0]["metadata"]["message"]
    assert runtime.unadopted == ["ses_nobody"]
    assert second.client.post(f"/v1/sessions/{kept}/exec", json={"command": "echo hi"}).status_code == 200
    second.close()  # keep_vms_on_exit unset: the adopted session ends with the server
    assert vms[kept].stopped
    third = make_harness(tmp_path)
    assert third.client.get(f"/v1/sessions/{kept}").json()["end_reason"] == "server_shutdown"
