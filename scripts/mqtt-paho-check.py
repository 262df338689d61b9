#!/usr/bin/env python3
"""Interoperability check of Bulwark's MQTT listener with paho-mqtt 2.x (run by HubTests.MQTTBrokerTests).

Usage: mqtt-paho-check.py HOST PORT CA DEVICE_ID DEVICE_CERT DEVICE_KEY OPERATOR_CERT OPERATOR_KEY

Covers, over TLS 1.3 with client certificates, MQTT 3.1.1 and 5: subscribe, QoS 0 and 1 publish and delivery,
a retained message delivered to a later subscriber with RETAIN set, a will published when the device's connection
drops without DISCONNECT, and a persistent session (3.1.1 clean_session=False, 5 Session Expiry) resumed after
reconnect with the QoS 1 command queued while it was away. Prints one line per check; exits 1 on the first failure.
"""
import queue
import ssl
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST, PORT, CA, DEVICE, DEVICE_CERT, DEVICE_KEY, OP_CERT, OP_KEY = sys.argv[1:9]
PORT = int(PORT)
TIMEOUT = 10


def fail(message):
    print("FAIL " + message, flush=True)
    sys.exit(1)


def client(name, cert, key, protocol, clean=True, will=None, expiry=None):
    """Connects and returns (client, messages queue, connack flags)."""
    kwargs = {"client_id": name, "protocol": protocol}
    if protocol == mqtt.MQTTv311:
        kwargs["clean_session"] = clean
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
    c.tls_set(ca_certs=CA, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if will:
        c.will_set(will[0], will[1], qos=1, retain=False)
    messages = queue.Queue()
    connected = queue.Queue()
    c.on_message = lambda _c, _u, m: messages.put(m)
    c.on_connect = lambda _c, _u, flags, reason, _p: connected.put((flags, reason))
    properties = None
    if protocol == mqtt.MQTTv5:
        properties = Properties(PacketTypes.CONNECT)
        if expiry is not None:
            properties.SessionExpiryInterval = expiry
        c.connect(HOST, PORT, keepalive=30, clean_start=clean, properties=properties)
    else:
        c.connect(HOST, PORT, keepalive=30)
    c.loop_start()
    try:
        flags, reason = connected.get(timeout=TIMEOUT)
    except queue.Empty:
        fail(f"{name}: no CONNACK")
    if reason.is_failure:
        fail(f"{name}: CONNACK {reason}")
    return c, messages, flags


def subscribe(c, topic, qos=1):
    granted = queue.Queue()
    c.on_subscribe = lambda _c, _u, _mid, codes, _p: granted.put(codes)
    c.subscribe(topic, qos=qos)
    try:
        codes = granted.get(timeout=TIMEOUT)
    except queue.Empty:
        fail(f"no SUBACK for {topic}")
    if any(code.is_failure for code in codes):
        fail(f"SUBACK refused {topic}: {codes}")


def expect(messages, topic, payload, what, retain=None):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        try:
            m = messages.get(timeout=max(0.1, deadline - time.time()))
        except queue.Empty:
            break
        if m.topic == topic and m.payload == payload:
            if retain is not None and bool(m.retain) != retain:
                fail(f"{what}: RETAIN flag is {m.retain}, expected {retain}")
            print(f"ok {what}", flush=True)
            return m
    fail(f"{what}: {topic} {payload!r} not received")


def publish(c, topic, payload, qos, retain=False):
    info = c.publish(topic, payload, qos=qos, retain=retain)
    info.wait_for_publish(timeout=TIMEOUT)
    if not info.is_published():
        fail(f"publish to {topic} (QoS {qos}) not acknowledged")


own = f"devices/{DEVICE}"
for protocol, label in ((mqtt.MQTTv311, "3.1.1"), (mqtt.MQTTv5, "5")):
    # Subscribe to its own tree and get its own QoS 0 and QoS 1 publishes back.
    c, messages, _ = client(DEVICE, DEVICE_CERT, DEVICE_KEY, protocol)
    subscribe(c, f"{own}/#")
    publish(c, f"{own}/telemetry", b'{"q":0,"v":"%s"}' % label.encode(), qos=0)
    expect(messages, f"{own}/telemetry", b'{"q":0,"v":"%s"}' % label.encode(), f"MQTT {label} QoS 0 round trip")
    publish(c, f"{own}/telemetry", b'{"q":1,"v":"%s"}' % label.encode(), qos=1)
    expect(messages, f"{own}/telemetry", b'{"q":1,"v":"%s"}' % label.encode(), f"MQTT {label} QoS 1 round trip")
    c.disconnect()
    c.loop_stop()

# Retained: the device publishes its state retained; an operator (fleet reader) subscribing later gets it, RETAIN set.
c, _, _ = client(DEVICE, DEVICE_CERT, DEVICE_KEY, mqtt.MQTTv5)
publish(c, f"{own}/state", b'{"on":true}', qos=1, retain=True)
c.disconnect()
c.loop_stop()
op, op_messages, _ = client("paho-operator", OP_CERT, OP_KEY, mqtt.MQTTv311)
subscribe(op, "devices/+/state")
expect(op_messages, f"{own}/state", b'{"on":true}', "retained message to a later fleet subscriber", retain=True)

# Will: the device's connection drops without DISCONNECT; the operator receives the will.
c, _, _ = client(DEVICE, DEVICE_CERT, DEVICE_KEY, mqtt.MQTTv311, will=(f"{own}/state", b'{"online":false}'))
c.loop_stop()
c.socket().close()  # no DISCONNECT: the hub must publish the will
expect(op_messages, f"{own}/state", b'{"online":false}', "will published on an abrupt disconnect")

# Persistent sessions: subscribe, go away, a command is queued, resume and receive it.
for protocol, label in ((mqtt.MQTTv311, "3.1.1"), (mqtt.MQTTv5, "5")):
    c, _, _ = client(DEVICE, DEVICE_CERT, DEVICE_KEY, protocol, clean=True, expiry=0)  # start from nothing
    c.disconnect()
    c.loop_stop()
    c, _, flags = client(DEVICE, DEVICE_CERT, DEVICE_KEY, protocol, clean=False, expiry=300)
    subscribe(c, f"{own}/commands/#")
    c.disconnect()
    c.loop_stop()
    command = b'{"reboot":"%s"}' % label.encode()
    publish(op, f"{own}/commands/reboot", command, qos=1)
    time.sleep(0.3)
    c, messages, flags = client(DEVICE, DEVICE_CERT, DEVICE_KEY, protocol, clean=False, expiry=300)
    if not flags.session_present:
        fail(f"MQTT {label}: session not present on resume")
    expect(messages, f"{own}/commands/reboot", command, f"MQTT {label} persistent session resumed with queued QoS 1")
    c.disconnect()
    c.loop_stop()

op.disconnect()
op.loop_stop()
print("all paho-mqtt checks passed", flush=True)
