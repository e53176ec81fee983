#!/usr/bin/env python3
"""Checkout load client of bench/checkout.sh and bench/entitlements.sh (issue 8).

CLIENTS threads, each on its own keep-alive HTTP connection, loop through the flow a tenant
integrates first, with an API key of the test environment (`x-api-key`, `x-tn`):

    PUT  /v1/customers/by-external-id/{prefix}-{client}-{n}   a new customer (201)
    POST /v1/offers                                           an offer for it (201)
    POST /v1/checkouts (Idempotency-Key, Prefer: wait=WAIT)   with a new sandbox token
    GET  /v1/checkouts/{id}                                   while still `processing`

With --wait S > 0 (default 5) the checkout is sent with `Prefer: wait=S` (RFC 7240): the server
answers 201 with the job's result when the job finishes within S seconds, so no poll is needed,
and 202 `processing` otherwise. With --wait 0 it asks for nothing and gets the plain 202.
Polling (only while `processing`): the first poll POLL_MS after the answer, then each wait
doubles, capped at the `Retry-After` the server sends (1 s), so a slow job is not hammered and
a fast one is seen soon.

Checkout only (DESIGN.md's "checkout-to-active-subscription"): --prepare-only FILE makes
--count customers with an offer each and writes them to FILE (one "customer offer" line each),
nothing timed; a later run with --pairs FILE starts each iteration at POST /v1/checkouts with the
next prepared pair (so its end-to-end time is the checkout's), and stops, counting an error, if
the pairs run out before the deadline.

--count N runs N iterations in all (seeding); --duration S starts iterations for S seconds, then
finishes the ones in flight. A checkout counts as completed in the window when its final state was
seen before the deadline. One line per checkout goes to --out (customer id, checkout id, status,
failure code, end-to-end ms from the customer's creation, ms from POST /v1/checkouts, polls, seen
before the deadline 1/0), and one summary line to stdout:

    completed=… rate=… e2e_p50=… e2e_p99=… checkout_p50=… checkout_p99=… polls=… failed=… errors=…

(rate: completed in the window ÷ the window's seconds; percentiles in ms over those checkouts;
failed: checkouts that ended other than `succeeded`; errors: unexpected HTTP answers, with the
first few printed to stderr). Standard library only.
"""

import argparse
import http.client
import json
import math
import sys
import threading
import time
import urllib.parse


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="http://127.0.0.1:PORT")
    p.add_argument("--key", required=True, help="API key (az_test_…) with customer.write, subscription.write")
    p.add_argument("--tenant", default="bench")
    p.add_argument("--storefront", required=True)
    p.add_argument("--psp", required=True, help="the storefront's sandbox PSP account")
    p.add_argument("--price", required=True)
    p.add_argument("--token", default="tok_sandbox_success")
    p.add_argument("--prefix", required=True, help="external id prefix (unique per run)")
    p.add_argument("--clients", type=int, default=8)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--count", type=int, help="iterations in all")
    g.add_argument("--duration", type=float, help="seconds during which iterations start")
    p.add_argument("--poll-ms", type=float, default=25.0, help="first poll after this many ms")
    p.add_argument("--wait", type=int, default=5, help="Prefer: wait=S on the checkout (0: none)")
    p.add_argument("--out", help="one line per checkout")
    p.add_argument("--prepare-only", metavar="FILE", help="make --count customer/offer pairs into FILE, no checkout")
    p.add_argument("--pairs", metavar="FILE", help="check out the prepared pairs of FILE")
    a = p.parse_args()
    if (a.prepare_only is None) == (a.out is None):
        p.error("give --out, or --prepare-only FILE")
    if a.prepare_only is not None and a.count is None:
        p.error("--prepare-only needs --count")
    return a


class Client:
    """One keep-alive connection; reconnects once when the server closed it."""

    def __init__(self, args):
        u = urllib.parse.urlsplit(args.base)
        self.host, self.port = u.hostname, u.port
        self.headers = {"x-api-key": args.key, "x-tn": args.tenant, "content-type": "application/json"}
        self.conn = None

    def call(self, method, path, body=None, extra=None):
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers, **(extra or {}))
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                return r.status, r.getheader("retry-after"), raw
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt == 1 or method != "GET":
                    raise
        raise AssertionError("unreachable")


class Shared:
    def __init__(self, args):
        self.lock = threading.Lock()
        self.next = 0
        self.rows = []
        self.errors = []
        self.args = args
        self.deadline = None
        self.pairs = None
        self.prepared = []

    def take(self):
        """The next iteration's number and prepared pair (or None), or None when the run is over."""
        with self.lock:
            if self.args.count is not None and self.next >= self.args.count:
                return None
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return None
            pair = None
            if self.pairs is not None:
                if self.next >= len(self.pairs):
                    self.errors.append(f"the {len(self.pairs)} prepared pairs ran out before the deadline")
                    self.deadline = time.monotonic()
                    return None
                pair = self.pairs[self.next]
            self.next += 1
            return self.next, pair

    def error(self, what):
        with self.lock:
            self.errors.append(what)


def expect(shared, what, status, raw, wanted):
    if status != wanted:
        shared.error(f"{what}: {status} {raw[:300]!r}")
        return None
    return json.loads(raw)


def worker(n_client, shared, args):
    c = Client(args)
    while True:
        taken = shared.take()
        if taken is None:
            return
        n, pair = taken
        try:
            if args.prepare_only is not None:
                prepare(c, n_client, n, shared, args)
            else:
                one(c, n_client, n, pair, shared, args)
        except Exception as e:  # noqa: BLE001 - reported, never hidden
            shared.error(f"iteration {n}: {type(e).__name__}: {e}")
            if c.conn is not None:
                c.conn.close()
                c.conn = None


def customer_and_offer(c, n_client, n, shared, args):
    """A new customer and an offer for it, or None."""
    ext = f"{args.prefix}-{n_client}-{n}"
    st, _, raw = c.call("PUT", f"/v1/customers/by-external-id/{ext}", {"email": f"{ext}@example.org", "country": "DE"})
    cus = expect(shared, "PUT customer", st, raw, 201)
    if cus is None:
        return None
    st, _, raw = c.call("POST", "/v1/offers", {"customer_id": cus["id"], "storefront_id": args.storefront})
    offer = expect(shared, "POST /v1/offers", st, raw, 201)
    if offer is None:
        return None
    return cus["id"], offer["id"]


def prepare(c, n_client, n, shared, args):
    pair = customer_and_offer(c, n_client, n, shared, args)
    if pair is not None:
        with shared.lock:
            shared.prepared.append(pair)


def one(c, n_client, n, pair, shared, args):
    t0 = time.monotonic()
    if pair is None:
        pair = customer_and_offer(c, n_client, n, shared, args)
        if pair is None:
            return
    cus_id, offer_id = pair
    ext = f"{args.prefix}-{cus_id}"
    t1 = time.monotonic()
    body = {
        "customer_id": cus_id,
        "offer_id": offer_id,
        "price_id": args.price,
        "payment_method": {"psp_account_id": args.psp, "token": args.token},
    }
    extra = {"idempotency-key": f"checkout-{ext}"}
    if args.wait > 0:
        extra["prefer"] = f"wait={args.wait}"
    st, retry, raw = c.call("POST", "/v1/checkouts", body, extra)
    # 201: the job's result (with Prefer: wait); 202: still processing.
    chk = expect(shared, "POST /v1/checkouts", st, raw, 201 if args.wait > 0 and st == 201 else 202)
    if chk is None:
        return
    polls = 0
    wait = args.poll_ms / 1000.0
    while chk["status"] == "processing":
        cap = float(retry) if retry else 1.0
        time.sleep(min(wait, cap))
        wait *= 2
        st, retry, raw = c.call("GET", f"/v1/checkouts/{chk['id']}")
        polls += 1
        chk = expect(shared, "GET /v1/checkouts/{id}", st, raw, 200)
        if chk is None:
            return
        if time.monotonic() - t1 > 120:
            shared.error(f"checkout {chk['id']} still processing after 120 s")
            return
    t2 = time.monotonic()
    in_window = shared.deadline is None or t2 <= shared.deadline
    row = (cus_id, chk["id"], chk["status"], chk.get("failure_code") or "-",
           (t2 - t0) * 1000, (t2 - t1) * 1000, polls, 1 if in_window else 0)
    with shared.lock:
        shared.rows.append(row)


def pct(values, p):
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(max(1, math.ceil(p * len(v))), len(v)) - 1]


def main():
    args = parse_args()
    shared = Shared(args)
    if args.pairs is not None:
        with open(args.pairs) as f:
            shared.pairs = [tuple(line.split()) for line in f if line.strip()]
    start = time.monotonic()
    if args.duration is not None:
        shared.deadline = start + args.duration
    threads = [threading.Thread(target=worker, args=(i, shared, args), daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    window = args.duration if args.duration is not None else time.monotonic() - start
    if args.prepare_only is not None:
        with open(args.prepare_only, "w") as f:
            for cus_id, offer_id in shared.prepared:
                f.write(f"{cus_id} {offer_id}\n")
        for e in shared.errors[:5]:
            print(f"checkout_load: {e}", file=sys.stderr)
        print("prepared=%d errors=%d seconds=%.1f" % (len(shared.prepared), len(shared.errors), window))
        return
    with open(args.out, "w") as f:
        for r in shared.rows:
            f.write("%s %s %s %s %.2f %.2f %d %d\n" % r)
    done = [r for r in shared.rows if r[7] == 1 and r[2] == "succeeded"]
    failed = [r for r in shared.rows if r[2] != "succeeded"]
    e2e = [r[4] for r in done]
    chk = [r[5] for r in done]
    polls = sum(r[6] for r in done) / len(done) if done else 0.0
    for e in shared.errors[:5]:
        print(f"checkout_load: {e}", file=sys.stderr)
    for r in failed[:5]:
        print(f"checkout_load: checkout {r[1]} ended {r[2]} ({r[3]})", file=sys.stderr)
    print(
        "completed=%d rate=%.1f e2e_p50=%.2f e2e_p99=%.2f checkout_p50=%.2f checkout_p99=%.2f polls=%.2f failed=%d errors=%d all=%d"
        % (len(done), len(done) / window, pct(e2e, 0.5), pct(e2e, 0.99), pct(chk, 0.5), pct(chk, 0.99), polls,
           len(failed), len(shared.errors), len(shared.rows))
    )


if __name__ == "__main__":
    main()
