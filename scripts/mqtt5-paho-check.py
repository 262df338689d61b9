#!/usr/bin/env python3
"""MQTT 5 features of Bulwark's MQTT listener with paho-mqtt 2.x as the client (run by HubTests.MQTTFeatureTests).

Usage: mqtt5-paho-check.py HOST PORT CA DEVICE_ID DEVICE_CERT DEVICE_KEY OPERATOR_CERT OPERATOR_KEY

The hub under test has the payload rule of MQTTPayloadPolicyTests for `devices/{device}/state/blob` (binary, Content
Type application/octet-stream or image/png). Covers, over TLS 1.3 with client certificates: CONNACK's Server Keep
Alive and Response Information; request/response (Response Topic, Correlation Data, User Properties, Content Type,
Payload Format Indicator, Message Expiry forwarded); Subscription Identifiers (one copy carrying both of two
overlapping subscriptions); topic aliases both ways; No Local; Retain Handling and Retain As Published; the Payload
Format Indicator and Content Type checked against the topic's rule (PUBACK 0x99); QoS 2 end to end; a shared
subscription; Message Expiry in a persistent session's queue; Will Delay Interval. paho hands topic aliases to the
application, so this script resolves them as a client must (MQTT 5.0 §3.3.2.3.4). Prints one line per check; exits 1
on the first failure.
"""
import queue
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST, PORT, CA, DEVICE, DEVICE_CERT, DEVICE_KEY, OP_CERT, OP_KEY = sys.argv[1:9]
PORT = int(PORT)
TIMEOUT = 10
OWN = f"devices/{DEVICE}"


def fail(message):
    print("FAIL " + message, flush=True)
    sys.exit(1)


def ok(what):
    print(f"ok {what}", flush=True)


def properties(kind, **values):
    p = Properties(kind)
    for name, value in values.items():
        setattr(p, name, value)
    return p


class Peer:
    """One MQTT 5 client: its received messages (topic aliases resolved), its acknowledgements' reason codes."""

    def __init__(self, name, cert, key, clean=True, expiry=None, keepalive=30, will=None, **connect):
        self.name = name
        self.messages = queue.Queue()
        self.log = []  # every message received, in order: `expect` takes from `messages` and skips others
        self.aliases = {}
        self.aliased = []  # (alias, topic as sent: '' when only the alias came)
        self.acks = {}
        self.acked = threading.Condition()
        self.subacks = queue.Queue()
        # What the network thread saw that the checks must fail on: an alias to a client that allows none
        # (MQTT-3.3.2-9), a disconnect the script did not ask for. paho must not reconnect behind our back: a new
        # session without the subscriptions would make every later "never" check pass vacuously.
        self.problems = []
        self.allows_aliases = "TopicAliasMaximum" in connect
        self.closing = False
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5,
                        reconnect_on_failure=False)
        c.tls_set(ca_certs=CA, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if will:
            topic, payload, delay = will
            c.will_set(topic, payload, qos=1, retain=False,
                       properties=properties(PacketTypes.WILLMESSAGE, WillDelayInterval=delay))
        connected = queue.Queue()
        c.on_connect = lambda _c, _u, flags, reason, props: connected.put((flags, reason, props))
        c.on_message = self._message
        c.on_publish = self._published
        c.on_subscribe = lambda _c, _u, mid, codes, _p: self.subacks.put((mid, codes))
        c.on_disconnect = self._disconnected
        if expiry is not None:
            connect["SessionExpiryInterval"] = expiry
        c.connect(HOST, PORT, keepalive=keepalive, clean_start=clean,
                  properties=properties(PacketTypes.CONNECT, **connect) if connect else None)
        c.loop_start()
        self.c = c
        try:
            self.flags, reason, self.connack = connected.get(timeout=TIMEOUT)
        except queue.Empty:
            fail(f"{name}: no CONNACK")
        if reason.is_failure:
            fail(f"{name}: CONNACK {reason}")

    def _message(self, _c, _u, m):
        topic = m.topic
        alias = getattr(m.properties, "TopicAlias", None)
        if alias is not None and not self.allows_aliases:
            self.problems.append(f"topic alias {alias} sent to a client that allows none ({topic!r})")
        if alias is not None:
            self.aliased.append((alias, topic))
            if topic:
                self.aliases[alias] = topic
            else:
                topic = self.aliases.get(alias, f"<unknown alias {alias}>")
        self.log.append((topic, m))
        self.messages.put((topic, m))

    def _disconnected(self, _c, _u, _flags, reason, _p):
        if not self.closing:
            self.problems.append(f"disconnected by the hub: {reason}")

    def check(self):
        if self.problems:
            fail(f"{self.name}: {self.problems[0]}")

    def _published(self, _c, _u, mid, reason, _p):
        with self.acked:
            self.acks[mid] = reason.value if hasattr(reason, "value") else int(reason)
            self.acked.notify_all()

    def publish(self, topic, payload, qos=1, retain=False, **props):
        """Publishes and returns the acknowledgement's reason code: PUBACK's, or PUBCOMP's for QoS 2 (paho does not
        report PUBREC's), 0 for QoS 0 once sent."""
        self.check()
        info = self.c.publish(topic, payload, qos=qos, retain=retain,
                              properties=properties(PacketTypes.PUBLISH, **props) if props else None)
        deadline = time.time() + TIMEOUT
        with self.acked:
            while info.mid not in self.acks:
                if not self.acked.wait(timeout=max(0.01, deadline - time.time())) and time.time() > deadline:
                    fail(f"{self.name}: no acknowledgement for {topic or '(alias)'}")
            return self.acks.pop(info.mid)

    def subscribe(self, topic, qos=1, identifier=None, **options):
        props = properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=identifier) if identifier else None
        _, mid = self.c.subscribe([(topic, SubscribeOptions(qos=qos, **options))], properties=props)
        try:
            got, codes = self.subacks.get(timeout=TIMEOUT)
        except queue.Empty:
            fail(f"{self.name}: no SUBACK for {topic}")
        if got != mid or any(code.is_failure for code in codes):
            fail(f"{self.name}: SUBACK for {topic}: {codes}")

    def expect(self, topic, payload, what, within=TIMEOUT):
        """The next message on `topic` with `payload` (others are skipped)."""
        deadline = time.time() + within
        while time.time() < deadline:
            try:
                got, m = self.messages.get(timeout=max(0.05, deadline - time.time()))
            except queue.Empty:
                break
            if got == topic and m.payload == payload:
                self.check()
                return m
        fail(f"{what}: {topic} {payload!r} not received by {self.name}")

    def mark(self):
        """Where the log stands now: `count` from here on."""
        return len(self.log)

    def count(self, matching, since=0, wait=0.8):
        """How many messages `matching` accepts arrived since `since`, after waiting `wait` seconds for more."""
        time.sleep(wait)
        self.check()
        return sum(1 for topic, m in self.log[since:] if matching(topic, m))

    def never(self, what, matching, since=0, wait=0.8):
        if self.count(matching, since, wait):
            fail(f"{what}: {self.name} received it")

    def once(self, what, matching, since=0, wait=0.8):
        n = self.count(matching, since, wait)
        if n != 1:
            fail(f"{what}: {self.name} received {n} copies")

    def close(self, abruptly=False):
        self.check()
        self.closing = True
        if abruptly:
            self.c.loop_stop()
            self.c.socket().close()  # no DISCONNECT
        else:
            self.c.disconnect()
            self.c.loop_stop()


def same_payload(payload):
    return lambda _topic, m: m.payload == payload


# CONNACK: a keep-alive above the hub's maximum is lowered (Server Keep Alive, §3.2.2.3.14); a device that asks for
# Response Information gets the base of its own reply topics (§3.2.2.3.15).
app = Peer("paho5-app", OP_CERT, OP_KEY)
app.subscribe("devices/+/telemetry", identifier=7)
app.subscribe(f"{OWN}/#", identifier=9)
dev = Peer(DEVICE, DEVICE_CERT, DEVICE_KEY, keepalive=3000, RequestResponseInformation=1, TopicAliasMaximum=2)
if getattr(dev.connack, "ServerKeepAlive", None) != 1200:
    fail(f"Server Keep Alive: {getattr(dev.connack, 'ServerKeepAlive', None)}, expected 1200")
ok("Server Keep Alive lowers a keep-alive of 3000 s to the hub's 1200 s")
if getattr(dev.connack, "ResponseInformation", None) != f"{OWN}/commands/response":
    fail(f"Response Information: {getattr(dev.connack, 'ResponseInformation', None)!r}")
ok("Response Information names the device's own reply topic")

# Request/response: every message property reaches the subscriber; one copy carries both identifiers.
dev.subscribe(f"{OWN}/commands/#", identifier=3)
request = b'{"q":1}'
code = dev.publish(
    f"{OWN}/telemetry", request, ResponseTopic=f"{OWN}/commands/reply", CorrelationData=b"\xc0\xff\xee",
    UserProperty=[("a", "1"), ("b", "2"), ("a", "3")], ContentType="application/json", PayloadFormatIndicator=1,
    MessageExpiryInterval=60)
if code != 0:
    fail(f"request: PUBACK {code:#x}")
asked = app.expect(f"{OWN}/telemetry", request, "request").properties
for name, expected in (
    ("ResponseTopic", f"{OWN}/commands/reply"), ("CorrelationData", b"\xc0\xff\xee"),
    ("UserProperty", [("a", "1"), ("b", "2"), ("a", "3")]), ("ContentType", "application/json"),
    ("PayloadFormatIndicator", 1),
):
    if getattr(asked, name, None) != expected:
        fail(f"request: {name} is {getattr(asked, name, None)!r}, expected {expected!r}")
# In any order (MQTT-3.3.4-4).
if sorted(getattr(asked, "SubscriptionIdentifier", [])) != [7, 9]:
    fail(f"request: Subscription Identifiers {getattr(asked, 'SubscriptionIdentifier', None)}, expected 7 and 9")
if not 58 <= getattr(asked, "MessageExpiryInterval", 0) <= 60:
    fail(f"request: Message Expiry Interval {getattr(asked, 'MessageExpiryInterval', None)}")
app.once("request delivered once", same_payload(request))
ok("request properties forwarded; one copy carries Subscription Identifiers 7 and 9")
if app.publish(asked.ResponseTopic, b'{"a":42}', CorrelationData=asked.CorrelationData) != 0:
    fail("response: not acknowledged")
answer = dev.expect(f"{OWN}/commands/reply", b'{"a":42}', "response").properties
if getattr(answer, "CorrelationData", None) != b"\xc0\xff\xee" or answer.SubscriptionIdentifier != [3]:
    fail(f"response: {answer}")
ok("response reaches the requester with its Correlation Data")

# Topic aliases, hub to client: at most the client's Topic Alias Maximum, resolved to the topics sent. That some
# delivery comes by alias alone is the hub's policy (an alias, once given, is kept for its topic), not the spec's.
names = ["a", "b", "c", "a", "b"]
for name in names:
    if app.publish(f"{OWN}/commands/{name}", b'{"n":"%s"}' % name.encode()) != 0:
        fail(f"command {name}: not acknowledged")
for name in names:
    dev.expect(f"{OWN}/commands/{name}", b'{"n":"%s"}' % name.encode(), f"command {name} through an alias")
if any(alias < 1 or alias > 2 for alias, _ in dev.aliased):
    fail(f"aliases beyond the client's maximum of 2: {dev.aliased}")
if not any(topic == "" for _, topic in dev.aliased):
    fail(f"no message came by alias alone: {dev.aliased}")
ok(f"outbound topic aliases within the client's maximum ({len(dev.aliased)} aliased deliveries)")

# Topic aliases, client to hub.
if dev.publish(f"{OWN}/telemetry", b'{"alias":1}', TopicAlias=1) != 0:
    fail("inbound alias set: not acknowledged")
if dev.publish("", b'{"alias":2}', TopicAlias=1) != 0:
    fail("inbound alias used: not acknowledged")
app.expect(f"{OWN}/telemetry", b'{"alias":2}', "a message sent by alias")
ok("inbound topic alias set and used")

# No Local (§3.8.3.1): the device's own message is not sent back to it; without the option it is.
dev.subscribe(f"{OWN}/telemetry", noLocal=True)
dev.subscribe(f"{OWN}/state")
if dev.publish(f"{OWN}/telemetry", b'{"nl":1}') != 0 or dev.publish(f"{OWN}/state", b'{"own":1}') != 0:
    fail("No Local: not acknowledged")
app.expect(f"{OWN}/telemetry", b'{"nl":1}', "No Local: others still receive it")
dev.expect(f"{OWN}/state", b'{"own":1}', "without No Local the publisher receives its own message")
dev.never("No Local", same_payload(b'{"nl":1}'))
ok("No Local keeps a client's own message from it")

# The topic's payload rule: binary with a Content Type allow-list; a Payload Format Indicator of 1 means UTF-8.
blob = f"{OWN}/state/blob"
checks = (
    (bytes(range(256)), {"ContentType": "image/png"}, 0),
    (b"<p>", {"ContentType": "text/html"}, 0x99),
    (b"\xff\xfe", {"ContentType": "application/octet-stream", "PayloadFormatIndicator": 1}, 0x99),
    (b"text", {"ContentType": "application/octet-stream", "PayloadFormatIndicator": 1}, 0),
)
for payload, props, expected in checks:
    code = dev.publish(blob, payload, **props)
    if code != expected:
        fail(f"payload rule: {props} {payload[:8]!r} gave {code:#x}, expected {expected:#x}")
app.expect(blob, bytes(range(256)), "an accepted binary payload")
app.expect(blob, b"text", "an accepted text payload")
app.never("a refused payload forwarded", lambda _t, m: m.payload in (b"<p>", b"\xff\xfe"))
ok("Content Type and Payload Format Indicator checked against the topic's rule (0x99)")

# Retain Handling (§3.3.1.3) and Retain As Published.
if dev.publish(f"{OWN}/state", b'{"on":true}', retain=True) != 0:
    fail("retained: not acknowledged")
watch = Peer("paho5-watch", OP_CERT, OP_KEY)
watch.subscribe(f"{OWN}/state", retainHandling=2)
watch.never("Retain Handling 2 sends no retained message", same_payload(b'{"on":true}'))
watch.subscribe("devices/+/state", retainHandling=1)
if not watch.expect(f"{OWN}/state", b'{"on":true}', "Retain Handling 1, new subscription").retain:
    fail("Retain Handling 1: the retained message came without RETAIN")
watch.subscribe("devices/+/state", retainHandling=1)
watch.once("Retain Handling 1 on an existing subscription", same_payload(b'{"on":true}'))
ok("Retain Handling 2 and 1 (new and existing subscription)")
rap = Peer("paho5-rap", OP_CERT, OP_KEY)
rap.subscribe(f"{OWN}/state", retainAsPublished=True, retainHandling=2)
if dev.publish(f"{OWN}/state", b'{"on":false}', retain=True) != 0:
    fail("retained: not acknowledged")
if not rap.expect(f"{OWN}/state", b'{"on":false}', "Retain As Published").retain:
    fail("Retain As Published: RETAIN not kept")
if watch.expect(f"{OWN}/state", b'{"on":false}', "a live retained message").retain:
    fail("without Retain As Published a live message must arrive with RETAIN 0")
ok("Retain As Published keeps RETAIN; without it a live message has RETAIN 0")
rap.close()

# QoS 2 end to end: PUBREC/PUBREL/PUBCOMP on both sides, delivered once.
q2 = Peer("paho5-q2", OP_CERT, OP_KEY)
q2.subscribe(f"{OWN}/telemetry", qos=2)
if dev.publish(f"{OWN}/telemetry", b'{"q":2}', qos=2) != 0:
    fail("QoS 2: PUBCOMP not successful")
if q2.expect(f"{OWN}/telemetry", b'{"q":2}', "QoS 2").qos != 2:
    fail("QoS 2: delivered below QoS 2")
q2.once("QoS 2 delivered once", same_payload(b'{"q":2}'))
ok("QoS 2 publish and delivery, once")
q2.close()

# A shared subscription: each message to exactly one member (§4.8.2), and to both members in turn (the hub's
# round robin; the spec leaves the choice to the server).
workers = [Peer(f"paho5-w{n}", OP_CERT, OP_KEY) for n in (1, 2)]
for worker in workers:
    worker.subscribe("$share/workers/devices/+/telemetry")
sent = [b'{"n":%d}' % n for n in range(1, 7)]
for payload in sent:
    if dev.publish(f"{OWN}/telemetry", payload) != 0:
        fail("shared: not acknowledged")
got = {id(worker): [] for worker in workers}
deadline = time.time() + TIMEOUT
while sum(map(len, got.values())) < len(sent) and time.time() < deadline:
    for worker in workers:
        try:
            topic, m = worker.messages.get(timeout=0.05)
        except queue.Empty:
            continue
        got[id(worker)].append(m.payload)
time.sleep(0.5)
copies = sorted(m.payload for worker in workers for _, m in worker.log)
if copies != sorted(sent) or not all(got.values()):
    fail(f"shared subscription: {[[m.payload for _, m in w.log] for w in workers]}")
ok(f"shared subscription: {len(got[id(workers[0])])} and {len(got[id(workers[1])])} of 6, each once")
for worker in workers:
    worker.close()
dev.close()

# Message Expiry in a persistent session's queue (§3.3.2.3.3): the expired command is dropped, the other carries
# what remains of its interval.
dev = Peer(DEVICE, DEVICE_CERT, DEVICE_KEY, clean=True, expiry=300)
dev.subscribe(f"{OWN}/commands/#")
dev.close()
time.sleep(0.3)
queued_at = time.time()
if app.publish(f"{OWN}/commands/x", b'{"x":1}', MessageExpiryInterval=1) != 0 or \
        app.publish(f"{OWN}/commands/y", b'{"y":1}', MessageExpiryInterval=100) != 0:
    fail("expiry: not acknowledged")
time.sleep(2.2)
dev = Peer(DEVICE, DEVICE_CERT, DEVICE_KEY, clean=False, expiry=300)
if not dev.flags.session_present:
    fail("expiry: session not present")
remaining = getattr(dev.expect(f"{OWN}/commands/y", b'{"y":1}', "a queued command").properties,
                    "MessageExpiryInterval", None)
waited = time.time() - queued_at
# At least 2.2 s passed (whole seconds: at most 98 left), and no more than the time measured around it.
if remaining is None or not 100 - waited - 1 <= remaining <= 98:
    fail(f"expiry: remaining interval {remaining} after {waited:.1f} s")
# A delivery started before the session was detached may be resent, with DUP (MQTT-3.3.2-5 lets it be sent): only a
# fresh copy of the expired command is wrong.
dev.never("an expired queued command", lambda _t, m: m.payload == b'{"x":1}' and not m.dup)
ok(f"Message Expiry: the expired command dropped, the other delivered with {remaining} s left")
dev.close()

# Will Delay Interval (§3.1.3.2.2): published after the delay; not at all when the client is back in time.
gone = b'{"gone":2}'
dev = Peer(DEVICE, DEVICE_CERT, DEVICE_KEY, clean=False, expiry=300, will=(f"{OWN}/state", gone, 2))
dev.close(abruptly=True)
left = time.time()
watch.expect(f"{OWN}/state", gone, "will after its delay")
if time.time() - left < 1.8:
    fail(f"will published {time.time() - left:.1f} s after the drop, before its 2 s delay")
ok(f"will published {time.time() - left:.1f} s after an abrupt drop (delay 2 s)")
since = watch.mark()
# A 6 s delay here: room for a loaded run's reconnect to come back within it.
dev = Peer(DEVICE, DEVICE_CERT, DEVICE_KEY, clean=False, expiry=300, will=(f"{OWN}/state", gone, 6))
dev.close(abruptly=True)
time.sleep(0.3)
dev = Peer(DEVICE, DEVICE_CERT, DEVICE_KEY, clean=False, expiry=300)
time.sleep(6.5)
# Anything published for the old connection comes before what the device publishes now.
if dev.publish(f"{OWN}/state", b'{"back":1}') != 0:
    fail("back: not acknowledged")
watch.expect(f"{OWN}/state", b'{"back":1}', "the device's message after the delay")
watch.never("a will when the client came back within its delay", same_payload(gone), since, wait=0)
dev.close()
ok("no will when the client is back within the delay")

for peer in (watch, app):
    if peer.aliased:
        fail(f"{peer.name}: topic aliases without a Topic Alias Maximum: {peer.aliased}")
watch.close()
app.close()
print("all paho-mqtt MQTT 5 checks passed", flush=True)
