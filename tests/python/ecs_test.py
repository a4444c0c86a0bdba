"""Drives berth's ECS endpoint with the real AWS clients: the aws CLI and boto3, from PyPI.

Usage: ecs_test.py full ENDPOINT IMAGE
       ecs_test.py tls ENDPOINT CA_FILE

Access keys come from the environment: DEPLOYER_KEY_ID/DEPLOYER_SECRET (a deployer of the
default namespace), VIEWER_KEY_ID/VIEWER_SECRET (a viewer of it) and ADMIN_KEY_ID/ADMIN_SECRET,
as `berth token create --aws` printed them. No client looks anywhere else: every call names the endpoint, and the
instance metadata service, profiles and config files are off.

`full` runs, against real containers: the AWS documentation's Fargate task definition (its
image replaced) registered with `aws ecs register-task-definition --cli-input-json`, run,
described and waited for with `aws ecs wait tasks-stopped`, then run again with a container
override; a service created, scaled, rolled to a new revision and waited for with `aws ecs
wait services-stable`; then the same ground with boto3, with paginators and waiters, tags,
clusters and container instances, and ECS's error answers. `tls` checks that the clients
reach an HTTPS endpoint trusting the cluster's CA. Prints "ok: ..." and exits 0 when all
holds.
"""

import json
import os
import subprocess
import sys
import tempfile

import boto3
import botocore.exceptions
from botocore.config import Config

REGION = "eu-west-1"
AWS = os.path.join(os.path.dirname(sys.executable), "aws")

# The example task definition of the AWS documentation ("Example Amazon ECS task definitions",
# a Fargate web server), as published; only its image is replaced.
DOCS_EXAMPLE = {
    "containerDefinitions": [
        {
            "command": [
                "/bin/sh -c \"echo '<html> <head> <title>Amazon ECS Sample App</title> <style>body {margin-top: 40px; background-color: #333;} </style> </head><body> <div style=color:white;text-align:center> <h1>Amazon ECS Sample App</h1> <h2>Congratulations!</h2> <p>Your application is now running on a container in Amazon ECS.</p> </div></body></html>' >  /usr/local/apache2/htdocs/index.html && httpd-foreground\""
            ],
            "entryPoint": ["sh", "-c"],
            "essential": True,
            "image": "public.ecr.aws/docker/library/httpd:2.4",
            "logConfiguration": {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": "/ecs/fargate-task-definition",
                    "awslogs-region": "us-east-1",
                    "awslogs-stream-prefix": "ecs",
                },
            },
            "name": "sample-fargate-app",
            "portMappings": [{"containerPort": 80, "hostPort": 80, "protocol": "tcp"}],
        }
    ],
    "cpu": "256",
    "executionRoleArn": "arn:aws:iam::012345678910:role/ecsTaskExecutionRole",
    "family": "fargate-task-definition",
    "memory": "512",
    "networkMode": "awsvpc",
    "runtimePlatform": {"operatingSystemFamily": "LINUX"},
    "requiresCompatibilities": ["FARGATE"],
}


def keys(role):
    return os.environ[f"{role}_KEY_ID"], os.environ[f"{role}_SECRET"]


def clean_env(key_id, secret):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and not k.endswith("_KEY_ID") and not k.endswith("_SECRET")
    }
    env.update(
        AWS_ACCESS_KEY_ID=key_id,
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return env


def cli(endpoint, *args, role="DEPLOYER", extra=()):
    """`aws ecs ARGS` against `endpoint`; its JSON answer (or None when it prints nothing)."""
    out = subprocess.run(
        [AWS, "--endpoint-url", endpoint, "--output", "json", *extra, "ecs", *args],
        env=clean_env(*keys(role)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise SystemExit(f"aws ecs {' '.join(args)} failed ({out.returncode}): {out.stderr}")
    return json.loads(out.stdout) if out.stdout.strip() else None


def client(endpoint, key_id, secret, verify=None):
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    return boto3.client(
        "ecs",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        verify=verify,
        config=Config(retries={"max_attempts": 2, "mode": "standard"}),
    )


def error_of(call):
    """The error code and message a refused call gets."""
    try:
        call()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["Error"]["Message"]
    raise SystemExit("the call was answered; it should have been refused")


def expect(condition, what):
    if not condition:
        raise SystemExit(f"failed: {what}")


def the_cli_flow(endpoint, image, workdir):
    example = json.loads(json.dumps(DOCS_EXAMPLE))
    example["containerDefinitions"][0]["image"] = image
    path = os.path.join(workdir, "fargate-task-definition.json")
    with open(path, "w") as f:
        json.dump(example, f)
    registered = cli(endpoint, "register-task-definition", "--cli-input-json", f"file://{path}")
    td = registered["taskDefinition"]
    expect(td["family"] == "fargate-task-definition" and td["status"] == "ACTIVE", td)
    expect(td["cpu"] == "256" and td["memory"] == "512", td)
    arn = td["taskDefinitionArn"]
    expect(arn.startswith(f"arn:aws:ecs:{REGION}:"), arn)

    run = cli(
        endpoint,
        "run-task",
        "--task-definition", "fargate-task-definition",
        "--launch-type", "FARGATE",
        "--network-configuration", "awsvpcConfiguration={subnets=[subnet-12345678],assignPublicIp=ENABLED}",
    )
    task_arn = run["tasks"][0]["taskArn"]
    expect(run["tasks"][0]["taskDefinitionArn"] == arn, run)
    cli(endpoint, "wait", "tasks-stopped", "--tasks", task_arn)
    task = cli(endpoint, "describe-tasks", "--tasks", task_arn)["tasks"][0]
    # The example writes to httpd's document root, which the busybox image lacks: its shell
    # ran, failed, and the essential container's exit ended the task.
    expect(task["lastStatus"] == "STOPPED", task)
    expect(task["stopCode"] == "EssentialContainerExited", task)
    expect(task["containers"][0]["exitCode"] not in (None, 0), task)

    overrides = json.dumps(
        {"containerOverrides": [{"name": "sample-fargate-app", "command": ["exit 3"]}]}
    )
    run = cli(
        endpoint, "run-task", "--task-definition", arn, "--overrides", overrides,
        "--started-by", "ci",
    )
    task_arn = run["tasks"][0]["taskArn"]
    cli(endpoint, "wait", "tasks-stopped", "--tasks", task_arn)
    task = cli(endpoint, "describe-tasks", "--tasks", task_arn)["tasks"][0]
    expect(task["containers"][0]["exitCode"] == 3, task)
    expect(task["startedBy"] == "ci", task)

    web = {
        "family": "web",
        "cpu": "128",
        "memory": "64",
        "containerDefinitions": [
            {"name": "web", "image": image, "command": ["sleep", "600"], "stopTimeout": 1}
        ],
    }
    cli(endpoint, "register-task-definition", "--cli-input-json", json.dumps(web))
    created = cli(
        endpoint, "create-service", "--service-name", "web", "--task-definition", "web",
        "--desired-count", "2",
    )["service"]
    expect(created["desiredCount"] == 2 and created["status"] == "ACTIVE", created)
    cli(endpoint, "wait", "services-stable", "--services", "web")
    service = cli(endpoint, "describe-services", "--services", "web")["services"][0]
    expect(service["runningCount"] == 2, service)
    cli(endpoint, "update-service", "--service", "web", "--desired-count", "1")
    web["containerDefinitions"][0]["environment"] = [{"name": "REVISION", "value": "2"}]
    revision = cli(endpoint, "register-task-definition", "--cli-input-json", json.dumps(web))
    new_arn = revision["taskDefinition"]["taskDefinitionArn"]
    cli(endpoint, "update-service", "--service", "web", "--task-definition", new_arn)
    cli(endpoint, "wait", "services-stable", "--services", "web")
    service = cli(endpoint, "describe-services", "--services", "web")["services"][0]
    expect(service["taskDefinition"] == new_arn, service)
    expect(len(service["deployments"]) == 1 and service["runningCount"] == 1, service)
    cli(endpoint, "delete-service", "--service", "web", "--force")


def the_boto3_flow(endpoint):
    ecs = client(endpoint, *keys("DEPLOYER"))
    fast = {"Delay": 1, "MaxAttempts": 120}
    image = os.environ["IMAGE"]
    td = ecs.register_task_definition(
        family="job",
        cpu="128",
        memory="64",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        containerDefinitions=[
            {"name": "job", "image": image, "command": ["sleep", "600"], "stopTimeout": 1}
        ],
        tags=[{"key": "team", "value": "a"}],
    )["taskDefinition"]
    described = ecs.describe_task_definition(taskDefinition="job", include=["TAGS"])
    expect(described["taskDefinition"]["taskDefinitionArn"] == td["taskDefinitionArn"], described)
    expect(described["tags"] == [{"key": "team", "value": "a"}], described)

    run = ecs.run_task(
        taskDefinition="job",
        count=3,
        startedBy="boto3",
        group="batch",
        clientToken="boto3-run-1",
        tags=[{"key": "suite", "value": "ecs"}],
    )
    arns = sorted(t["taskArn"] for t in run["tasks"])
    expect(len(arns) == 3 and not run["failures"], run)
    again = ecs.run_task(taskDefinition="job", count=3, clientToken="boto3-run-1")
    expect(sorted(t["taskArn"] for t in again["tasks"]) == arns, "a retried clientToken runs nothing new")
    ecs.get_waiter("tasks_running").wait(tasks=arns, WaiterConfig=fast)

    pages = ecs.get_paginator("list_tasks").paginate(
        startedBy="boto3", PaginationConfig={"PageSize": 1}
    )
    listed, count = [], 0
    for page in pages:
        count += 1
        listed += page["taskArns"]
    expect(sorted(listed) == arns and count >= 3, (listed, count))
    tags = ecs.list_tags_for_resource(resourceArn=arns[0])["tags"]
    expect({"key": "suite", "value": "ecs"} in tags, tags)
    task = ecs.describe_tasks(tasks=[arns[0]])["tasks"][0]
    expect(task["group"] == "batch" and task["lastStatus"] == "RUNNING", task)

    for arn in arns:
        stopped = ecs.stop_task(task=arn, reason="done with it")["task"]
        expect(stopped["desiredStatus"] == "STOPPED", stopped)
    ecs.get_waiter("tasks_stopped").wait(tasks=arns, WaiterConfig=fast)
    stopped = ecs.list_tasks(desiredStatus="STOPPED", family="job")["taskArns"]
    expect(set(arns) <= set(stopped), stopped)
    missing = ecs.describe_tasks(tasks=["00000000-0000-4000-8000-000000000000"])
    expect(missing["failures"][0]["reason"] == "MISSING", missing)

    service = ecs.create_service(
        serviceName="api",
        taskDefinition="job",
        desiredCount=1,
        launchType="FARGATE",
        deploymentConfiguration={
            "maximumPercent": 200,
            "minimumHealthyPercent": 100,
            "deploymentCircuitBreaker": {"enable": True, "rollback": True},
        },
    )["service"]
    expect(service["deploymentConfiguration"]["deploymentCircuitBreaker"]["enable"], service)
    ecs.get_waiter("services_stable").wait(services=["api"], WaiterConfig=fast)
    first = ecs.describe_services(services=["api"])["services"][0]["deployments"][0]["id"]
    ecs.update_service(service="api", forceNewDeployment=True)
    ecs.get_waiter("services_stable").wait(services=["api"], WaiterConfig=fast)
    service = ecs.describe_services(services=["api"])["services"][0]
    expect(len(service["deployments"]) == 1 and service["deployments"][0]["id"] != first, service)
    ecs.tag_resource(resourceArn=service["serviceArn"], tags=[{"key": "tier", "value": "1"}])
    tags = ecs.list_tags_for_resource(resourceArn=service["serviceArn"])["tags"]
    expect(tags == [{"key": "tier", "value": "1"}], tags)
    expect(service["serviceArn"] in ecs.list_services()["serviceArns"], "listed")

    clusters = ecs.describe_clusters(clusters=["default"])["clusters"]
    expect(clusters[0]["runningTasksCount"] >= 1, clusters)
    expect(
        f"arn:aws:ecs:{REGION}:000000000000:cluster/default" in ecs.list_clusters()["clusterArns"],
        "the default cluster is listed",
    )
    # Nodes serve every namespace: reading them takes a token of every namespace, as in
    # berth's own API.
    code, _ = error_of(lambda: ecs.list_container_instances())
    expect(code == "AccessDeniedException", f"a deployer reads no nodes: {code}")
    admin = client(endpoint, *keys("ADMIN"))
    instances = admin.list_container_instances()["containerInstanceArns"]
    expect(len(instances) == 1, instances)
    node = admin.describe_container_instances(containerInstances=instances)["containerInstances"][0]
    expect(node["status"] == "ACTIVE" and node["runningTasksCount"] >= 1, node)
    expect(node["registeredResources"][0]["name"] == "CPU", node)

    # ECS's error answers.
    code, message = error_of(
        lambda: ecs.register_task_definition(
            family="vols",
            containerDefinitions=[{"name": "a", "image": image, "memory": 64}],
            volumes=[{"name": "data"}],
        )
    )
    expect(code == "InvalidParameterException" and "volumes" in message, (code, message))
    code, _ = error_of(lambda: ecs.update_service(service="nope", desiredCount=1))
    expect(code == "ServiceNotFoundException", code)
    code, _ = error_of(lambda: ecs.create_cluster(clusterName="other"))
    expect(code == "AccessDeniedException", f"a deployer creates no cluster: {code}")
    viewer = client(endpoint, *keys("VIEWER"))
    expect(viewer.list_tasks(family="job", desiredStatus="STOPPED")["taskArns"], "a viewer reads")
    code, _ = error_of(lambda: viewer.run_task(taskDefinition="job"))
    expect(code == "AccessDeniedException", f"a viewer runs nothing: {code}")
    code, _ = error_of(lambda: client(endpoint, "AKIAIOSFODNN7EXAMPLE", "x").list_clusters())
    expect(code == "UnrecognizedClientException", code)
    key_id, secret = keys("DEPLOYER")
    code, _ = error_of(lambda: client(endpoint, key_id, secret[:-1] + "0").list_clusters())
    expect(code == "InvalidSignatureException", code)

    ecs.update_service(service="api", desiredCount=0)
    deleted = ecs.delete_service(service="api")["service"]
    expect(deleted["status"] == "DRAINING", deleted)


def main():
    mode, endpoint = sys.argv[1], sys.argv[2]
    if mode == "tls":
        ca = sys.argv[3]
        ecs = client(endpoint, *keys("DEPLOYER"), verify=ca)
        clusters = ecs.describe_clusters()["clusters"]
        expect(clusters[0]["clusterName"] == "default", clusters)
        listed = cli(endpoint, "list-clusters", extra=("--ca-bundle", ca))
        expect(listed["clusterArns"], listed)
        print("ok: the aws CLI and boto3 reach the HTTPS endpoint")
        return
    os.environ["IMAGE"] = sys.argv[3]
    with tempfile.TemporaryDirectory() as workdir:
        the_cli_flow(endpoint, sys.argv[3], workdir)
    the_boto3_flow(endpoint)
    print("ok: the aws CLI and boto3 flows")


if __name__ == "__main__":
    main()
