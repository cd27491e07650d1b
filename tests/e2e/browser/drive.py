#!/usr/bin/env python3
"""Drives Debian's headless Chromium through a script of steps for the
browser tests (the Rust side, tests/e2e/harness/browser.rs, writes the
script and reads the one JSON line this prints).

    drive.py SCRIPT.json --artifacts DIR [--ca-file PEM]... [--map-host NAME=IP]...
             [--ignore-certificate-errors]

SCRIPT is a JSON list of steps (or {"steps": [...]}), each an object with
one operation key:

    {"open": URL}
    {"login": {"user": U, "password": P, "timeout": S}}
        the OpenID Provider's login page (oidc-provider's dev interaction:
        inputs `login` and `password`), submitted; a consent page, if one
        follows, is confirmed; done once the browser has left /interaction/.
    {"wait_url": {"contains": TEXT, "timeout": S}}
    {"wait_text": {"text": TEXT, "timeout": S}}       polls the page's text, no reload
    {"wait_selector": {"css": SEL, "timeout": S}}     present and visible
    {"fill": {"css": SEL, "value": TEXT}}             clears, then types
    {"click": {"css": SEL}}                           waits until clickable
    {"screenshot": PATH}
    {"assert_text": TEXT}
    {"assert_no_text": TEXT}
    {"eval": JS, "expect": VALUE}    JS is a function body (a bare expression
                                     is returned); "expect" is optional
    {"cookies": PATH}                the current page's cookies, with secure,
                                     httpOnly and sameSite, written as JSON
    {"sleep_ms": N}                  only where nothing observable changes

wait_url, wait_text, wait_selector and click also take just the string;
timeouts default to 20 s. The page's text is document.body.innerText (what
is rendered, not the HTML). Output, one line on stdout; each result has
"step", "op" and the "url" after the step, plus "value" (eval), "cookies"
(cookies), "path" (screenshot) or "confirmed_consent" (login):

    {"ok": true, "results": [{"step": i, "op": ..., "url": ..., ...}, ...]}
    {"ok": false, "step": i, "op": ..., "error": ..., "url": ..., "page_text":
     first 2000 characters, "screenshot": DIR/failure-step-i.png,
     "console": [browser console entries], "results": [steps done]}

Exit status 0 or 1 (2 for bad arguments). The driver is always quit, and
the script is a child subreaper that waits for every process Chromium
started (crashpad included) before it prints; any it had to kill are listed
in "killed_leftovers". So no chromium or chromedriver outlives the script.

Every connection stays on 127.0.0.0/8: names resolve only as --map-host
says (to loopback), every other name is NOTFOUND, there is no proxy, and
Chromium's own background traffic (updates, sync, safe browsing, metrics)
is switched off. HTTPS is verified by Chromium itself against its roots
plus each --ca-file, which goes into a throwaway NSS database
($HOME/.pki/nssdb, HOME being a temporary directory) with certutil.
"""

import argparse
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DEFAULT_TIMEOUT = 20.0
PAGE_TEXT_CHARS = 2000

# Selenium Manager must never try to download a browser or a driver.
os.environ["SE_OFFLINE"] = "true"

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

LOOPBACK_ONLY = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-proxy-server",
    "--disable-client-side-phishing-detection",
]
RESOLVE_NOTHING = "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


class StepError(Exception):
    pass


def trust_cas(home, ca_files):
    """An NSS database at HOME/.pki/nssdb (where Chromium on Linux looks)
    holding each CA as a trusted issuer of server certificates."""
    db = os.path.join(home, ".pki", "nssdb")
    os.makedirs(db, mode=0o700)
    subprocess.run(
        ["certutil", "-N", "-d", "sql:" + db, "--empty-password"],
        check=True,
        capture_output=True,
    )
    for i, ca in enumerate(ca_files):
        subprocess.run(
            ["certutil", "-A", "-d", "sql:" + db, "-n", f"blastgate-test-ca-{i}",
             "-t", "C,,", "-i", ca],
            check=True,
            capture_output=True,
        )


def start_driver(scratch, args):
    home = os.path.join(scratch, "home")
    profile = os.path.join(scratch, "profile")
    os.makedirs(home)
    os.makedirs(profile)
    if args.ca_file:
        trust_cas(home, args.ca_file)
    opts = webdriver.ChromeOptions()
    opts.binary_location = args.chromium
    opts.add_argument("--headless=new")
    if os.geteuid() == 0:
        opts.add_argument("--no-sandbox")
    opts.add_argument("--disable-dev-shm-usage")
    opts.add_argument("--password-store=basic")
    opts.add_argument(f"--window-size={args.window}")
    opts.add_argument(f"--user-data-dir={profile}")
    for flag in LOOPBACK_ONLY:
        opts.add_argument(flag)
    rules = [f"MAP {name} {ip}" for name, ip in args.map_host] + [RESOLVE_NOTHING]
    opts.add_argument("--host-resolver-rules=" + " , ".join(rules))
    if args.ignore_certificate_errors:
        opts.add_argument("--ignore-certificate-errors")
    # No password-manager bubbles or leak checks (they would phone home).
    opts.add_experimental_option("prefs", {
        "credentials_enable_service": False,
        "profile.password_manager_enabled": False,
        "profile.password_manager_leak_detection": False,
    })
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    env = dict(os.environ)
    env["HOME"] = home
    service = Service(executable_path=args.chromedriver, env=env,
                      log_output=os.path.join(args.artifacts, "chromedriver.log"))
    try:
        driver = webdriver.Chrome(options=opts, service=service)
    except BaseException:
        service.stop()
        raise
    driver.set_page_load_timeout(60)
    return driver


def page_text(driver):
    try:
        return driver.execute_script(
            "return document.body ? document.body.innerText : ''") or ""
    except Exception:
        return ""


def wait(driver, timeout, what, cond):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(cond)
    except TimeoutException:
        raise StepError(f"timed out after {timeout} s waiting for {what}") from None


def arg(spec, key):
    """`spec[key]`; a bare string stands for the step's text, css or URL part."""
    if isinstance(spec, dict):
        if key not in spec:
            raise StepError(f"missing {key!r}")
        return spec[key]
    if key in ("text", "css", "contains"):
        return spec
    raise StepError(f"missing {key!r}")


def timeout_of(spec):
    t = spec.get("timeout", DEFAULT_TIMEOUT) if isinstance(spec, dict) else DEFAULT_TIMEOUT
    return float(t)


def login(driver, spec):
    user = arg(spec, "user")
    password = spec.get("password", "any")
    t = timeout_of(spec)
    field = wait(driver, t, "the login form (input[name=login])",
                 EC.visibility_of_element_located((By.NAME, "login")))
    field.clear()
    field.send_keys(user)
    pw = driver.find_element(By.NAME, "password")
    pw.clear()
    pw.send_keys(password)
    form = field.find_element(By.XPATH, "./ancestor::form")
    form.find_element(By.CSS_SELECTOR, "button[type=submit],input[type=submit]").click()
    end = time.monotonic() + t
    confirmed = False
    while "/interaction/" in driver.current_url:
        if time.monotonic() > end:
            raise StepError(f"still on the provider's pages after {t} s: {driver.current_url}")
        # A consent page (oidc-provider's dev interaction has prompt=consent
        # and a submit button): confirm it once.
        if not confirmed and driver.find_elements(By.NAME, "login") == []:
            # Only a form that posts to the provider's interaction: the page
            # may already be the relying party's (whose own forms, such as
            # a sign-out button, must never be clicked here).
            try:
                buttons = [
                    b for b in driver.find_elements(
                        By.CSS_SELECTOR, "form button[type=submit],form input[type=submit]")
                    if "/interaction/" in (b.find_element(By.XPATH, "./ancestor::form")
                                           .get_attribute("action") or "")
                ]
                if buttons:
                    buttons[0].click()
                    confirmed = True
            except WebDriverException:
                # The page went on while we looked: look again.
                pass
        time.sleep(0.1)
    return {"confirmed_consent": confirmed}


def js_body(src):
    s = src.strip()
    return s if "return" in s.split() or s.startswith("return") else f"return ({s});"


def run_step(driver, i, step):
    if not isinstance(step, dict) or not step:
        raise StepError(f"a step is an object with one operation: {step!r}")
    ops = [k for k in step if k not in ("expect",)]
    if len(ops) != 1:
        raise StepError(f"one operation per step, got {ops}")
    op = ops[0]
    spec = step[op]
    out = {"step": i, "op": op}
    if op == "open":
        driver.get(spec)
    elif op == "login":
        out.update(login(driver, spec))
    elif op == "wait_url":
        text = arg(spec, "contains")
        wait(driver, timeout_of(spec), f"a URL containing {text!r}",
             lambda d: text in d.current_url)
    elif op == "wait_text":
        text = arg(spec, "text")
        wait(driver, timeout_of(spec), f"the text {text!r}",
             lambda d: text in page_text(d))
    elif op == "wait_selector":
        css = arg(spec, "css")
        wait(driver, timeout_of(spec), f"a visible {css!r}",
             EC.visibility_of_element_located((By.CSS_SELECTOR, css)))
    elif op == "fill":
        css = arg(spec, "css")
        el = wait(driver, timeout_of(spec), f"a visible {css!r}",
                  EC.visibility_of_element_located((By.CSS_SELECTOR, css)))
        el.clear()
        el.send_keys(str(arg(spec, "value")))
    elif op == "click":
        css = arg(spec, "css")
        wait(driver, timeout_of(spec), f"a clickable {css!r}",
             EC.element_to_be_clickable((By.CSS_SELECTOR, css))).click()
    elif op == "screenshot":
        os.makedirs(os.path.dirname(os.path.abspath(spec)), exist_ok=True)
        if not driver.save_screenshot(spec):
            raise StepError(f"could not save a screenshot to {spec}")
        out["path"] = spec
    elif op == "assert_text":
        if spec not in page_text(driver):
            raise StepError(f"the page does not show {spec!r}")
    elif op == "assert_no_text":
        if spec in page_text(driver):
            raise StepError(f"the page shows {spec!r}")
    elif op == "eval":
        value = driver.execute_script(js_body(spec))
        out["value"] = value
        if "expect" in step and value != step["expect"]:
            raise StepError(f"eval returned {value!r}, expected {step['expect']!r}")
    elif op == "cookies":
        cookies = driver.get_cookies()
        with open(spec, "w") as f:
            json.dump(cookies, f, indent=2)
        out["cookies"] = cookies
    elif op == "sleep_ms":
        time.sleep(float(spec) / 1000.0)
    else:
        raise StepError(f"unknown operation {op!r}")
    out["url"] = driver.current_url
    return out


def become_subreaper():
    """Orphans of ours (Chromium's crashpad handler double-forks out of
    its parent) are reparented to this process, so it can wait for them."""
    import ctypes

    pr_set_child_subreaper = 36
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def children():
    me = str(os.getpid())
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.find("(") + 1:stat.rfind(")")]
        if stat[stat.rfind(")") + 2:].split()[1] == me:
            found.append((int(d), name))
    return found


def reap_all(grace=10.0):
    """Waits up to `grace` seconds for every descendant to exit, then kills
    the rest; returns the ones that had to be killed."""
    end = time.monotonic() + grace
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass
        except ChildProcessError:
            return []
        if time.monotonic() > end:
            break
        time.sleep(0.05)
    left = children()
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        while True:
            os.waitpid(-1, 0)
    except ChildProcessError:
        pass
    return [f"{pid} {name}" for pid, name in left]


def console_log(driver):
    try:
        return [f"{e.get('level')} {e.get('message')}" for e in driver.get_log("browser")][-50:]
    except Exception:
        return []


def describe(e):
    if isinstance(e, StepError):
        return str(e)
    if isinstance(e, WebDriverException):
        # Its message without chromedriver's native stack trace.
        return f"{type(e).__name__}: {(e.msg or '').strip()}"
    return f"{type(e).__name__}: {e}"


def run(args, steps):
    results = []
    # Inside the artifacts directory, so every process of this run (the
    # profile is on Chromium's command line) can be told by that path.
    scratch = tempfile.mkdtemp(prefix="browser-", dir=args.artifacts)
    driver = None
    i = -1
    try:
        driver = start_driver(scratch, args)
        for i, step in enumerate(steps):
            results.append(run_step(driver, i, step))
        return {"ok": True, "results": results}
    except Exception as e:
        failure = {
            "ok": False,
            "step": i,
            "op": next(iter(steps[i]), None) if 0 <= i < len(steps) and isinstance(steps[i], dict) else None,
            "error": describe(e),
            "url": None,
            "page_text": "",
            "results": results,
        }
        if driver is not None:
            try:
                failure["url"] = driver.current_url
            except Exception:
                pass
            failure["page_text"] = page_text(driver)[:PAGE_TEXT_CHARS]
            shot = os.path.join(args.artifacts, f"failure-step-{i}.png")
            try:
                if driver.save_screenshot(shot):
                    failure["screenshot"] = shot
            except Exception:
                pass
            failure["console"] = console_log(driver)
        return failure
    finally:
        if driver is not None:
            try:
                driver.quit()
            except Exception:
                pass
        shutil.rmtree(scratch, ignore_errors=True)


def loopback_mapping(text):
    name, _, ip = text.partition("=")
    try:
        loopback = ipaddress.IPv4Address(ip) in ipaddress.IPv4Network("127.0.0.0/8")
    except ValueError:
        loopback = False
    if not name or not loopback:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=IP with IP in 127.0.0.0/8")
    return name, ip


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("script", help="JSON file: a list of steps")
    p.add_argument("--artifacts", required=True,
                   help="directory for failure screenshots and chromedriver.log")
    p.add_argument("--ca-file", action="append", default=[],
                   help="PEM CA certificate to trust for HTTPS (repeatable)")
    p.add_argument("--ignore-certificate-errors", action="store_true",
                   help="accept any server certificate (only if a CA cannot be trusted)")
    p.add_argument("--map-host", action="append", default=[], type=loopback_mapping,
                   metavar="NAME=IP", help="resolve NAME to IP, a 127.0.0.0/8 address (repeatable)")
    p.add_argument("--window", default="1280,900", help="window size W,H")
    p.add_argument("--chromium", default=CHROMIUM)
    p.add_argument("--chromedriver", default=CHROMEDRIVER)
    args = p.parse_args()
    os.makedirs(args.artifacts, exist_ok=True)
    with open(args.script) as f:
        script = json.load(f)
    steps = script["steps"] if isinstance(script, dict) else script
    if not isinstance(steps, list):
        p.error("the script is a JSON list of steps")

    # A SIGTERM (the harness's timeout) still quits the driver.
    def terminate(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    become_subreaper()
    try:
        outcome = run(args, steps)
    finally:
        killed = reap_all()
    if killed:
        outcome["killed_leftovers"] = killed
    print(json.dumps(outcome), flush=True)
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
