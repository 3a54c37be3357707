#!/bin/bash
# EC2 user-data for the MongoDB host of an Ant Media Server cluster
# (Ubuntu 20.04/22.04/24.04 or Debian 11/12, x86_64 or arm64).
#
# It installs ams-agent, then `ams-agent setup mongo` does the rest in one
# plan: MongoDB's apt repository (a keyring fetched over HTTPS,
# signed-by=), mongodb-org, limits in a mongod.service drop-in, transparent
# huge pages as the MongoDB series recommends, bindIp on localhost and the
# private address, the user "ams" (role root, SCRAM-SHA-256) and
# authorization, each step waited for with a deadline. It never prompts.
# It ends by printing the `ams-agent join` line for the nodes.
# Output: /var/log/cloud-init-output.log.
set -euo pipefail

# Where you publish the package built by packaging/build-deb.sh.
AMS_AGENT_DEB_URL="https://example.com/ams-agent_0.1.0_amd64.deb"
MONGODB_VERSION="8.0"
# The SSM Parameter Store SecureString holding the password of the MongoDB
# user "ams" (the same parameter user-data-origin.sh and user-data-edge.sh
# read). Empty: ams-agent generates a password and keeps it 0600 in
# /etc/ams-agent/mongo-admin-password on this host. ams-agent reads it
# itself with the instance role (no aws CLI, no temporary file); the role
# needs ssm:GetParameter (and kms:Decrypt for a customer key).
MONGO_PASSWORD_PARAMETER=""

export DEBIAN_FRONTEND=noninteractive

# 1. ams-agent. Waits for the apt lock: on first boot unattended-upgrades
#    may hold it.
curl -fsSL --retry 10 --retry-connrefused -o /tmp/ams-agent.deb "$AMS_AGENT_DEB_URL"
apt-get -o DPkg::Lock::Timeout=600 install -y /tmp/ams-agent.deb
rm -f /tmp/ams-agent.deb

imds_token=$(curl -fsS -X PUT http://169.254.169.254/latest/api/token \
	-H "X-aws-ec2-metadata-token-ttl-seconds: 300")
imds() { curl -fsS -H "X-aws-ec2-metadata-token: $imds_token" "http://169.254.169.254/latest/meta-data/$1"; }

# 2. The password, if any: read by ams-agent from SSM, never on a command
#    line, never in this log.
password=(--yes)
if [ -n "$MONGO_PASSWORD_PARAMETER" ]; then
	password=(--admin-password-ssm "$MONGO_PASSWORD_PARAMETER")
fi

# 3. MongoDB, configured and secured; prints the nodes' join line.
ams-agent setup mongo --mongodb-version "$MONGODB_VERSION" \
	--bind-ip "$(imds local-ipv4)" --admin-user ams "${password[@]}"
