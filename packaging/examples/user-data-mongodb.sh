#!/bin/bash
# EC2 user-data for the MongoDB host of an Ant Media Server cluster
# (Ubuntu 20.04/22.04/24.04 or Debian 12, x86_64 or arm64).
#
# `ams-agent setup mongo` will do these steps; it does not exist yet, so this
# is plain shell: MongoDB's apt repository (keyring + signed-by),
# mongodb-org, open-file/process limits in a systemd drop-in, bindIp on the
# private address, and, if a password parameter is set, users and
# authorization. It ends by printing the `ams-agent join` line for the nodes.
# Output: /var/log/cloud-init-output.log.
set -euo pipefail

MONGODB_VERSION="8.0"
# Optional, both SSM Parameter Store SecureStrings (see user-data-origin.sh):
# the password of the user "ams" that AMS and ams-agent use, and of the
# MongoDB administrator "admin". Empty: no authentication; then only the
# cluster's security group may reach port 27017.
MONGO_PASSWORD_PARAMETER=""
MONGO_ADMIN_PASSWORD_PARAMETER=""

if [ -n "$MONGO_PASSWORD_PARAMETER" ] && [ -z "$MONGO_ADMIN_PASSWORD_PARAMETER" ]; then
	echo "MONGO_PASSWORD_PARAMETER is set: set MONGO_ADMIN_PASSWORD_PARAMETER too" >&2
	exit 2
fi

export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }

imds() {
	local token
	token=$(curl -fsS -X PUT http://169.254.169.254/latest/api/token \
		-H "X-aws-ec2-metadata-token-ttl-seconds: 300")
	curl -fsS -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}

# Prints a SecureString from SSM Parameter Store (installs the AWS CLI first
# if needed).
ssm_secret() {
	if ! command -v aws >/dev/null && [ ! -x /snap/bin/aws ]; then
		if command -v snap >/dev/null; then snap install aws-cli --classic; else apt_get install -y awscli; fi
	fi
	PATH="$PATH:/snap/bin" aws ssm get-parameter --region "$(imds placement/region)" \
		--name "$1" --with-decryption --query Parameter.Value --output text
}

wait_for_mongod() {
	for _ in $(seq 1 120); do
		if mongosh --quiet --eval 'db.adminCommand({ ping: 1 }).ok' >/dev/null 2>&1; then
			return 0
		fi
		sleep 1
	done
	echo "mongod does not answer on 127.0.0.1:27017 after 2 minutes" >&2
	return 1
}

# 1. MongoDB's repository and packages.
. /etc/os-release
case "$ID" in
ubuntu) suite="$VERSION_CODENAME/mongodb-org/$MONGODB_VERSION multiverse"; base=https://repo.mongodb.org/apt/ubuntu ;;
debian) suite="$VERSION_CODENAME/mongodb-org/$MONGODB_VERSION main"; base=https://repo.mongodb.org/apt/debian ;;
*) echo "unsupported distribution: $ID (MongoDB's apt repository has Ubuntu and Debian)" >&2; exit 1 ;;
esac
keyring="/usr/share/keyrings/mongodb-server-$MONGODB_VERSION.gpg"
apt_get update
apt_get install -y ca-certificates curl gnupg
curl -fsSL "https://www.mongodb.org/static/pgp/server-$MONGODB_VERSION.asc" |
	gpg --batch --yes --dearmor -o "$keyring"
echo "deb [ arch=amd64,arm64 signed-by=$keyring ] $base $suite" \
	>"/etc/apt/sources.list.d/mongodb-org-$MONGODB_VERSION.list"
apt_get update
apt_get install -y mongodb-org

# 2. Limits. systemd ignores /etc/security/limits.conf for services; MongoDB
#    wants at least 64000 open files and processes.
mkdir -p /etc/systemd/system/mongod.service.d
cat >/etc/systemd/system/mongod.service.d/50-ams-limits.conf <<'UNIT'
[Service]
LimitNOFILE=64000
LimitNPROC=64000
UNIT

# 3. Listen on localhost and the private address (not 0.0.0.0).
private_ip=$(imds local-ipv4)
sed -i -E "s/^([[:space:]]*bindIp:).*/\1 127.0.0.1,$private_ip/" /etc/mongod.conf
grep -q "bindIp: 127.0.0.1,$private_ip\$" /etc/mongod.conf

systemctl daemon-reload
systemctl enable mongod
systemctl restart mongod
wait_for_mongod

# 4. Users and authorization (only with a password parameter). The users are
#    created before authorization is on; passwords go through the
#    environment, never a command line.
join_auth=""
if [ -n "$MONGO_PASSWORD_PARAMETER" ]; then
	AMS_PASSWORD=$(ssm_secret "$MONGO_PASSWORD_PARAMETER")
	ADMIN_PASSWORD=$(ssm_secret "$MONGO_ADMIN_PASSWORD_PARAMETER")
	export AMS_PASSWORD ADMIN_PASSWORD
	mongosh --quiet --eval '
		const admin = db.getSiblingDB("admin");
		if (admin.getUser("admin") === null) {
			admin.createUser({ user: "admin", pwd: process.env.ADMIN_PASSWORD,
				roles: [{ role: "root", db: "admin" }] });
		}
		if (admin.getUser("ams") === null) {
			admin.createUser({ user: "ams", pwd: process.env.AMS_PASSWORD,
				roles: [{ role: "readWriteAnyDatabase", db: "admin" },
					{ role: "dbAdmin", db: "ams_agent" }] });
		}'
	unset AMS_PASSWORD ADMIN_PASSWORD
	if grep -q '^#security:' /etc/mongod.conf; then
		sed -i 's/^#security:$/security:\n  authorization: enabled/' /etc/mongod.conf
	fi
	grep -q '^  authorization: enabled' /etc/mongod.conf
	systemctl restart mongod
	wait_for_mongod
	join_auth=" --mongo-user ams --mongo-password-file <file holding the password>"
fi

echo "MongoDB $MONGODB_VERSION is ready on $private_ip:27017. On each AMS node:"
echo "  ams-agent join --mongo $private_ip --role origin|edge$join_auth"
