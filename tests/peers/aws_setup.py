"""Sets up the AWS account of a test in moto (before IAM is enforced), with
boto3 from the same virtual environment as moto, and prints what it made
as one JSON line:

    aws_setup.py <endpoint> <region> <spec json>

spec: {"roles": {"<name>": ["ssm:GetParameter", ...]},   inline policy of each role
       "parameters": {"<name>": "<SecureString value>"},
       "group": {"name": …, "hook": …, "heartbeatTimeout": 30, "defaultResult": "CONTINUE"}}

out:  {"credentials": {"<role>": {"AccessKeyId", "SecretAccessKey", "SessionToken"}},
       "instance": "i-…" (the group's instance, when a group was asked for)}
"""

import json
import sys

import boto3


def main():
    endpoint, region, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    kw = dict(endpoint_url=endpoint, region_name=region,
              aws_access_key_id="AKIASETUP0000000000", aws_secret_access_key="setup")
    iam = boto3.client("iam", **kw)
    sts = boto3.client("sts", **kw)
    out = {"credentials": {}}
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
             "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
    for name, actions in spec.get("roles", {}).items():
        role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
        if actions:
            iam.put_role_policy(RoleName=name, PolicyName=name + "-policy", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
        c = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="i-instance")["Credentials"]
        out["credentials"][name] = {k: c[k] for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")}
    ssm = boto3.client("ssm", **kw)
    for name, value in spec.get("parameters", {}).items():
        ssm.put_parameter(Name=name, Value=value, Type="SecureString")
    g = spec.get("group")
    if g:
        ec2 = boto3.client("ec2", **kw)
        image = ec2.describe_images()["Images"][0]["ImageId"]
        ec2.create_launch_template(LaunchTemplateName="ams", LaunchTemplateData={"ImageId": image, "InstanceType": "t3.micro"})
        asg = boto3.client("autoscaling", **kw)
        asg.create_auto_scaling_group(AutoScalingGroupName=g["name"], LaunchTemplate={"LaunchTemplateName": "ams"},
                                      MinSize=0, MaxSize=2, DesiredCapacity=1, AvailabilityZones=[region + "a"])
        asg.put_lifecycle_hook(AutoScalingGroupName=g["name"], LifecycleHookName=g["hook"],
                               LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
                               HeartbeatTimeout=g.get("heartbeatTimeout", 30), DefaultResult=g.get("defaultResult", "CONTINUE"))
        groups = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[g["name"]])["AutoScalingGroups"]
        out["instance"] = groups[0]["Instances"][0]["InstanceId"]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
