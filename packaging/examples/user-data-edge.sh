#!/bin/bash
# EC2 user-data for an Ant Media Server EDGE node (an instance started from
# the AMS image: AMS is installed in /usr/local/antmedia).
#
# It installs ams-agent, then `ams-agent join` waits for MongoDB (up to 10
# minutes by default: the MongoDB host may still be installing), switches
# AMS to cluster mode, registers this node and starts ams-agent.service.
# It never prompts. Output: /var/log/cloud-init-output.log.
#
# Set the variables below. user-data-origin.sh is the same file with
# ROLE=origin.
set -euo pipefail

# Where you publish the package built by packaging/build-deb.sh (an HTTPS
# URL: a release asset, or an S3 object the instance can read).
AMS_AGENT_DEB_URL="https://example.com/ams-agent_0.1.0_amd64.deb"
# The MongoDB host: private IP, DNS name, host:port or a mongodb:// URI.
MONGO="10.0.1.5"
# Optional: the SSM Parameter Store SecureString holding the password of
# the MongoDB user "ams" (user-data-mongodb.sh creates that user from the
# same parameter). ams-agent reads it itself with the instance role: no aws
# CLI, no temporary file, never on a command line or in this log. Empty:
# MongoDB without authentication, reachable only from the cluster's
# security group. The instance role needs ssm:GetParameter on it (and
# kms:Decrypt for a customer key): docs/scale-in.md has the policy.
MONGO_PASSWORD_PARAMETER=""
# Optional: the Auto Scaling group and its EC2_INSTANCE_TERMINATING
# lifecycle hook; empty: found from the instance (DescribeAutoScalingInstances,
# DescribeLifecycleHooks). A scale-in then drains the node before it goes.
AUTOSCALING_GROUP=""
LIFECYCLE_HOOK=""
ROLE="edge"

export DEBIAN_FRONTEND=noninteractive

# 1. ams-agent. Waits for the apt lock: on first boot unattended-upgrades
#    may hold it.
curl -fsSL --retry 10 --retry-connrefused -o /tmp/ams-agent.deb "$AMS_AGENT_DEB_URL"
apt-get -o DPkg::Lock::Timeout=600 install -y /tmp/ams-agent.deb
rm -f /tmp/ams-agent.deb

# 2. Join the cluster.
args=(--mongo "$MONGO" --role "$ROLE")
if [ -n "$MONGO_PASSWORD_PARAMETER" ]; then
	args+=(--mongo-user ams --mongo-password-ssm "$MONGO_PASSWORD_PARAMETER")
fi
[ -z "$AUTOSCALING_GROUP" ] || args+=(--autoscaling-group "$AUTOSCALING_GROUP")
[ -z "$LIFECYCLE_HOOK" ] || args+=(--lifecycle-hook "$LIFECYCLE_HOOK")
ams-agent join "${args[@]}"
