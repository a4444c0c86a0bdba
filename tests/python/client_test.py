"""Drives berth's public gRPC API from Python stubs generated from proto/ with grpcio-tools.

Usage: client_test.py SERVER_ADDRESS CREDENTIALS_FILE IMAGE

Connects over TLS, trusting the cluster CA of the credentials file (admin.toml) and sending its
token; checks that a call without a token is refused, then registers a task definition, runs a
task, reads it back until it stopped, checks its exit code, lists it, and checks the standard
gRPC health service. Exits non-zero on any failure.
"""

import os
import sys
import tempfile
import time
import tomllib

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def generate(out):
    """Compiles proto/berth/v1/*.proto into `out` and makes it importable."""
    proto_dir = os.path.join(ROOT, "proto")
    files = sorted(
        os.path.join("berth", "v1", f)
        for f in os.listdir(os.path.join(proto_dir, "berth", "v1"))
        if f.endswith(".proto")
    )
    args = ["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed: {args}")
    for d in ("berth", os.path.join("berth", "v1")):
        open(os.path.join(out, d, "__init__.py"), "a").close()
    sys.path.insert(0, out)


def main():
    server, credentials_file, image = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(credentials_file, "rb") as f:
        credentials = tomllib.load(f)
    with tempfile.TemporaryDirectory() as out:
        generate(out)
        from berth.v1 import api_pb2, api_pb2_grpc, types_pb2

        tls = grpc.ssl_channel_credentials(root_certificates=credentials["ca"].encode())
        # The servers' certificates name localhost as well as their address.
        options = (("grpc.ssl_target_name_override", "localhost"),)
        anonymous = grpc.secure_channel(server, tls, options)
        try:
            api_pb2_grpc.BerthStub(anonymous).ListTasks(api_pb2.ListTasksRequest(), timeout=5)
            raise SystemExit("a call without a token was answered")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
        token = grpc.access_token_call_credentials(credentials["token"])
        channel = grpc.secure_channel(
            server, grpc.composite_channel_credentials(tls, token), options
        )
        grpc.channel_ready_future(channel).result(timeout=10)

        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, reply
        reply = health.Check(health_pb2.HealthCheckRequest(service="berth.v1.Berth"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, reply

        berth = api_pb2_grpc.BerthStub(channel)
        spec = types_pb2.TaskDefinitionSpec(
            family="from-python",
            cpu=128,
            memory=32,
            containers=[
                types_pb2.ContainerDefinition(
                    name="main",
                    image=image,
                    command=["sh", "-c", "echo hello from python; exit 3"],
                    essential=True,
                    stop_timeout=1,
                )
            ],
        )
        registered = berth.RegisterTaskDefinition(
            api_pb2.RegisterTaskDefinitionRequest(spec=spec), timeout=10
        )
        assert registered.task_definition.revision >= 1, registered
        ran = berth.RunTask(
            api_pb2.RunTaskRequest(task_definition="from-python", client_token="py-1"), timeout=10
        )
        assert len(ran.tasks) == 1, ran
        task_id = ran.tasks[0].task_id

        deadline = time.time() + 60
        while True:
            task = berth.DescribeTask(api_pb2.DescribeTaskRequest(task_id=task_id), timeout=10)
            if task.last_status == types_pb2.TASK_STATUS_STOPPED:
                break
            if time.time() > deadline:
                raise SystemExit(f"task {task_id} did not stop: {task}")
            time.sleep(0.2)
        assert task.containers[0].exit_code == 3, task
        assert task.stop_code == types_pb2.STOP_CODE_ESSENTIAL_CONTAINER_EXITED, task
        assert task.task_definition == f"from-python:{registered.task_definition.revision}", task

        listed = berth.ListTasks(api_pb2.ListTasksRequest(), timeout=10)
        assert task_id in [t.task_id for t in listed.tasks], listed

        # The same client token answers the same task instead of running another.
        again = berth.RunTask(
            api_pb2.RunTaskRequest(task_definition="from-python", client_token="py-1"), timeout=10
        )
        assert [t.task_id for t in again.tasks] == [task_id], again

        # A missing object is NOT_FOUND, a bad request INVALID_ARGUMENT.
        try:
            berth.DescribeTask(
                api_pb2.DescribeTaskRequest(task_id="0b6c9d4e-7f1a-4c2b-9e8d-5a3f2e1d0c9b"),
                timeout=10,
            )
            raise SystemExit("describing a missing task succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e
        try:
            berth.DescribeTask(api_pb2.DescribeTaskRequest(task_id="nope"), timeout=10)
            raise SystemExit("describing a task by a name that is no task ID succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        try:
            berth.RegisterTaskDefinition(
                api_pb2.RegisterTaskDefinitionRequest(
                    spec=types_pb2.TaskDefinitionSpec(family="bad", cpu=0, memory=32)
                ),
                timeout=10,
            )
            raise SystemExit("an invalid task definition was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        print(f"ok: task {task_id} ran from Python and exited 3")


if __name__ == "__main__":
    main()
