//! moto's server standing in for AWS on loopback: HTTPS with a CA of its
//! own (blastgate is told to trust it as `upstream_ca_file`), an IAM user
//! and key (the credential blastgate holds), a secret and an instance
//! made first, then SigV4 and IAM checking switched on, so a request
//! signed with anything but the held key fails. Stopped, by pid, on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{free_port, https_upstream::ca_and_leaf, wait_until};

/// moto, the AWS CLI and boto3: a venv of their own (`cargo xtask setup`).
pub const VENV_BIN: &str = "/opt/blastgate-tools/moto-venv/bin";

/// What the server was set up with.
pub struct Moto {
    child: Child,
    pub port: u16,
    pub ca: PathBuf,
    /// The held key (the IAM user's).
    pub access_key_id: String,
    pub secret_access_key: String,
    pub instance_id: String,
    /// A role the held user may assume.
    pub role_arn: String,
    /// moto's own log (werkzeug's request lines and errors).
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

const SETUP: &str = r#"
import json, sys, boto3, urllib.request, ssl
url, ca = sys.argv[1], sys.argv[2]
kw = dict(endpoint_url=url, region_name="us-east-1", verify=ca,
          aws_access_key_id="testing", aws_secret_access_key="testing")
iam = boto3.client("iam", **kw)
iam.create_user(UserName="held-user")
iam.put_user_policy(UserName="held-user", PolicyName="all",
    PolicyDocument=json.dumps({"Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="held-user")["AccessKey"]
role = iam.create_role(RoleName="agent-role",
    AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                       "Principal": {"AWS": "*"}}]}))["Role"]["Arn"]
iam.put_role_policy(RoleName="agent-role", PolicyName="all",
    PolicyDocument=json.dumps({"Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
sm = boto3.client("secretsmanager", **kw)
sm.create_secret(Name="prod/db", SecretString="hunter2-the-db-password")
ec2 = boto3.client("ec2", **kw)
image = ec2.describe_images()["Images"][0]["ImageId"]
inst = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
ctx = ssl.create_default_context(cafile=ca)
req = urllib.request.Request(url + "/moto-api/reset-auth", data=b"0",
    headers={"Content-Type": "text/plain"}, method="POST")
urllib.request.urlopen(req, context=ctx).read()
print(json.dumps({"ak": key["AccessKeyId"], "sk": key["SecretAccessKey"], "instance": inst, "role": role}))
"#;

impl Moto {
    /// Whether moto's server is installed; if not, says why (a skip,
    /// which CI=true turns into a failure).
    pub fn available() -> bool {
        let there = std::path::Path::new(&format!("{VENV_BIN}/moto_server")).exists();
        if !there {
            blastgate::testing::skip(
                "moto_server is missing from /opt/blastgate-tools/moto-venv (cargo xtask setup)",
            );
        }
        there
    }

    pub fn start() -> Moto {
        Moto::start_on("127.0.0.2", free_port(), &["moto.test"])
    }

    /// moto at `ip:port`, its certificate for `names` and `ip`.
    pub fn start_on(ip: &str, port: u16, names: &[&str]) -> Moto {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let p = |n: &str| root.join(n);
        let mut sans = names.to_vec();
        sans.push(ip);
        ca_and_leaf(dir.path(), &sans);
        let log = p("moto.log");
        let child = Command::new(format!("{VENV_BIN}/moto_server"))
            .args(["-H", ip, "-p", &port.to_string(), "-c"])
            .arg(p("leaf.pem"))
            .arg("-k")
            .arg(p("leaf.key"))
            .stdout(Stdio::from(std::fs::File::create(&log).expect("log")))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("log"),
            ))
            .spawn()
            .expect("moto_server");
        let mut moto = Moto {
            child,
            port,
            ca: p("ca.pem"),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            instance_id: String::new(),
            role_arn: String::new(),
            log,
            dir,
        };
        wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect((ip, port)).ok()
        })
        .expect("moto_server listens");
        std::fs::write(p("setup.py"), SETUP).expect("setup.py");
        // Direct, as the operator preparing AWS (moto.test is the name on
        // its certificate; python checks it against the URL's host).
        let out = Command::new(format!("{VENV_BIN}/python"))
            .arg(p("setup.py"))
            .arg(format!("https://{ip}:{port}"))
            .arg(&moto.ca)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("PYTHONHTTPSVERIFY", "1")
            .output()
            .expect("setup");
        assert!(
            out.status.success(),
            "moto setup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("setup output");
        moto.access_key_id = v["ak"].as_str().unwrap_or_default().to_string();
        moto.secret_access_key = v["sk"].as_str().unwrap_or_default().to_string();
        moto.instance_id = v["instance"].as_str().unwrap_or_default().to_string();
        moto.role_arn = v["role"].as_str().unwrap_or_default().to_string();
        moto
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
