"""Starting a federation with Flower's own commands: the SuperLink (`flower-superlink`), one
SuperNode per board (`flower-supernode --node-config "port=... model=... data=..."`) and the run
(`flwr run <app> <connection>`), where <app> is microtrain's Flower App (a pyproject.toml naming
microtrain.federated.server_app:app and client_app:app, written by `app_dir`) and <connection> a
SuperLink connection in $FLWR_HOME/config.toml (`write_connection`).

Everything here only assembles those commands (what `microtrain federate` runs and prints); a user
who outgrows one laptop runs the same commands on several machines, with TLS certificates.
"""

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

# every key the ServerApp and ClientApp read, with its default (flwr run --run-config overrides)
RUN_CONFIG = {
    "model": "", "scenario": "", "num-rounds": 5, "epochs": 1, "strategy": "subset-fedavg", "server-lr": 1.0,
    "personal": "", "min-nodes": 2, "connect-timeout": 120.0, "round-timeout": 600.0, "round-deadline": 300.0,
    "rollout-fraction": 0.0, "rollout-tolerance": 0.0, "report": "", "out": "", "dp-clip": 0.0, "dp-noise": 0.0, "secagg": False,
}


def _toml(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def app_dir(folder):
    """microtrain's Flower App: a project folder `flwr run` packages (it holds no code: the
    components are in the installed microtrain package)."""
    import microtrain
    os.makedirs(folder, exist_ok=True)
    cfg = "\n".join(f"{k} = {_toml(v)}" for k, v in RUN_CONFIG.items())
    with open(os.path.join(folder, "pyproject.toml"), "w") as f:
        f.write(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "microtrain-federated"
version = "{microtrain.__version__}"
description = "microtrain: int8 boards learning one model together"
license = "MIT"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "microtrain"

[tool.flwr.app.components]
serverapp = "microtrain.federated.server_app:app"
clientapp = "microtrain.federated.client_app:app"

[tool.flwr.app.config]
{cfg}
""")
    return folder


def write_connection(home, name, address, insecure=True, root_certificates=None, num_supernodes=None):
    """A SuperLink connection `name` in $FLWR_HOME/config.toml (made the default)."""
    os.makedirs(home, exist_ok=True)
    lines = ["[superlink]", f"default = {_toml(name)}", "", f"[superlink.{name}]", f"address = {_toml(address)}"]
    if insecure:
        lines.append("insecure = true")
    if root_certificates:
        lines.append(f"root-certificates = {_toml(os.path.abspath(root_certificates))}")
    if num_supernodes:
        lines += ["", f"[superlink.{name}.options]", f"num-supernodes = {int(num_supernodes)}",
                  "", f"[superlink.{name}.options.backend.client-resources]", "num-cpus = 1"]
    with open(os.path.join(home, "config.toml"), "w") as f:
        f.write("\n".join(lines) + "\n")


def tool(name):
    """A Flower command of this environment (beside this Python), else from PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    found = here if os.path.exists(here) else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: install microtrain[federated] (pip install 'microtrain[federated]')")
    return found


def env(home):
    e = dict(os.environ, FLWR_HOME=home, FLWR_DISABLE_UPDATE_CHECK="1")
    e["PATH"] = os.path.dirname(sys.executable) + os.pathsep + e.get("PATH", "")
    return e


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def superlink_cmd(host="127.0.0.1", port=8000, simulation=False, certificates=None, database=None):
    cmd = [tool("flower-superlink"), "--host", host, "--port", str(port), "--isolation", "subprocess",
           "--disable-runtime-dependency-installation"]
    if simulation:
        cmd.append("--simulation")
    if database:
        cmd += ["--database", database]
    if certificates:
        ca, cert, key = certificates
        cmd += ["--ssl-ca-certfile", ca, "--ssl-certfile", cert, "--ssl-keyfile", key]
    else:
        cmd.append("--insecure")
    return cmd


def node_config(cfg):
    """--node-config text of a dict (strings quoted, numbers as they are)."""
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in cfg.items())


def supernode_cmd(superlink, cfg, port, root_certificates=None):
    cmd = [tool("flower-supernode"), "--superlink", superlink, "--port", str(port), "--isolation", "subprocess",
           "--node-config", node_config(cfg)]
    cmd += ["--root-certificates", root_certificates] if root_certificates else ["--insecure"]
    return cmd


def run_cmd(app, connection, run_config):
    over = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
    return [tool("flwr"), "run", app, connection, "--stream"] + (["--run-config", over] if over else [])


def wait_port(host, port, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


class Processes:
    """Background Flower processes with their logs; all stopped on exit."""

    def __init__(self, folder, home):
        self.folder, self.home, self.procs = folder, home, []

    def start(self, name, cmd):
        log = open(os.path.join(self.folder, name + ".log"), "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env(self.home), start_new_session=True)
        self.procs.append((name, p, log))
        return p

    def stop(self, name=None):
        import signal
        for n, p, log in list(self.procs):
            if name is not None and n != name:
                continue
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=10)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    p.wait()
            log.close()
            self.procs.remove((n, p, log))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def shown(cmd):
    return " ".join(shlex.quote(c) for c in cmd)


def self_signed(folder, hosts=("127.0.0.1", "localhost")):
    """A CA and a server certificate signed by it, for trying TLS (files in `folder`): returns
    (ca.pem, server.pem, server.key).  Real deployments use their own PKI."""
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    os.makedirs(folder, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, issuer, key, sign_key, ca, sans=()):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            names = []
            for h in sans:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(h)))
                except ValueError:
                    names.append(x509.DNSName(h))
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return b.sign(sign_key, hashes.SHA256())

    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "microtrain federation CA")])
    srv_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    ca = cert(ca_name, ca_name, ca_key, ca_key, True)
    srv = cert(srv_name, ca_name, srv_key, ca_key, False, hosts)
    paths = [os.path.join(folder, n) for n in ("ca.pem", "server.pem", "server.key")]
    for path, data in zip(paths, (ca.public_bytes(serialization.Encoding.PEM), srv.public_bytes(serialization.Encoding.PEM),
                                  srv_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))):
        with open(path, "wb") as f:
            f.write(data)
    return tuple(paths)


def run_local(folder, run_config, nodes=None, simulate=0, log=print, timeout=3600, certificates=None):
    """One federation on this machine, with Flower's commands: a SuperLink (in simulation mode
    with `simulate` SuperNodes, else a deployment one) and one SuperNode per entry of `nodes`
    (node-config dicts: port, model, data, ...), then `flwr run`; with certificates (ca, cert,
    key) every connection is TLS.  Returns (exit code, the run's output); the processes' logs
    stay in `folder`."""
    folder = os.path.abspath(folder)
    home = os.path.join(folder, "flwr-home")
    app = app_dir(os.path.join(folder, "app"))
    port = free_port()
    ca = certificates[0] if certificates else None
    write_connection(home, "microtrain", f"127.0.0.1:{port}", insecure=ca is None, root_certificates=ca,
                     num_supernodes=simulate or None)
    with Processes(folder, home) as P:
        P.start("superlink", superlink_cmd(port=port, simulation=bool(simulate), certificates=certificates,
                                           database=os.path.join(folder, "superlink.db")))
        wait_port("127.0.0.1", port)
        for k, cfg in enumerate(nodes or ()):
            cmd = supernode_cmd(f"127.0.0.1:{port}", cfg, free_port(), root_certificates=ca)
            log("$ " + shown(cmd))
            P.start(f"supernode-{k}", cmd)
        cmd = run_cmd(app, "microtrain", run_config)
        log("$ " + shown(cmd))
        r = subprocess.run(cmd, env=env(home), capture_output=True, text=True, timeout=timeout, cwd=folder)
        out = r.stdout + r.stderr
        # `flwr run --stream` exits 0 when the ServerApp fails: its exit code is in the log
        failed = "ServerApp raised an exception" in out or "Simulation raised an exception" in out
        return (r.returncode or (1 if failed else 0)), out
