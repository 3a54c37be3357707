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
# same parameter). Empty: MongoDB without authentication, reachable only
# from the cluster's security group. The instance role needs
# ssm:GetParameter (and kms:Decrypt for a customer key).
MONGO_PASSWORD_PARAMETER=""
ROLE="edge"

export DEBIAN_FRONTEND=noninteractive

# 1. ams-agent. Waits for the apt lock: on first boot unattended-upgrades
#    may hold it.
curl -fsSL --retry 10 --retry-connrefused -o /tmp/ams-agent.deb "$AMS_AGENT_DEB_URL"
apt-get -o DPkg::Lock::Timeout=600 install -y /tmp/ams-agent.deb
rm -f /tmp/ams-agent.deb

# 2. The MongoDB password, if any: into a 0600 file on tmpfs, never on a
#    command line, never in this log.
auth=()
if [ -n "$MONGO_PASSWORD_PARAMETER" ]; then
	if ! command -v aws >/dev/null && [ ! -x /snap/bin/aws ]; then
		snap install aws-cli --classic
	fi
	PATH="$PATH:/snap/bin"
	imds_token=$(curl -fsS -X PUT http://169.254.169.254/latest/api/token \
		-H "X-aws-ec2-metadata-token-ttl-seconds: 300")
	region=$(curl -fsS -H "X-aws-ec2-metadata-token: $imds_token" \
		http://169.254.169.254/latest/meta-data/placement/region)
	password_file=$(umask 077 && mktemp /run/ams-mongo-password.XXXXXX)
	trap 'rm -f "$password_file"' EXIT
	aws ssm get-parameter --region "$region" --name "$MONGO_PASSWORD_PARAMETER" \
		--with-decryption --query Parameter.Value --output text >"$password_file"
	auth=(--mongo-user ams --mongo-password-file "$password_file")
fi

# 3. Join the cluster.
ams-agent join --mongo "$MONGO" --role "$ROLE" "${auth[@]}"
