#!/usr/bin/env python3
"""BlueZ simulator for the vitalbridge gateway's Bluetooth LE tests.

Starts a private D-Bus daemon configured as a *system* bus, claims ``org.bluez`` on it with
python-dbusmock's ``bluez5`` template, adds adapter ``hci0`` and the health devices of a JSON
scenario, with the GATT objects BlueZ exports for a connected LE device (GattService1,
GattCharacteristic1, GattDescriptor1 for the CCCD). Measurements are sent as
``PropertiesChanged(Value)`` signals when the client calls StartNotify (or, for glucose, when it
writes a Record Access Control Point request), exactly as BlueZ forwards notifications and
indications.

First stdout line: ``DBUS_SYSTEM_BUS_ADDRESS=unix:path=...``, printed once everything is exported
(it doubles as the readiness signal). Nothing else goes to stdout. Runs until SIGTERM/SIGINT and
then stops its dbus-daemon. See README.md beside this file for the scenario format.
"""

import argparse
import ctypes
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VECTORS = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "data", "vectors", "gatt.json"))

BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"

ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
SERVICE_IFACE = "org.bluez.GattService1"
CHAR_IFACE = "org.bluez.GattCharacteristic1"
DESC_IFACE = "org.bluez.GattDescriptor1"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
OM_IFACE = "org.freedesktop.DBus.ObjectManager"
SIM_IFACE = "com.vitalbridge.BleSim"

DEFAULT_TIMING = {
    "notifyDelayMs": 200,  # StartNotify (or RACP write) -> first value
    "notifyIntervalMs": 100,  # between two values
    "disconnectDelayMs": 300,  # last value -> device-side disconnect (disconnectAfterSend)
    "servicesResolvedDelayMs": 100,  # Connect -> ServicesResolved=true
    "appearDelayMs": 300,  # StartDiscovery -> InterfacesAdded of a hidden device
    "advertiseIntervalMs": 1000,  # RSSI PropertiesChanged while discovering (0: none)
}

# Characteristic catalogue: short UUID -> (name, flags). Flags as BlueZ spells them.
CHARS = {
    0x2A35: ("Blood Pressure Measurement", ["indicate"]),
    0x2A36: ("Intermediate Cuff Pressure", ["notify"]),
    0x2A49: ("Blood Pressure Feature", ["read"]),
    0x2A1C: ("Temperature Measurement", ["indicate"]),
    0x2A1D: ("Temperature Type", ["read"]),
    0x2A1E: ("Intermediate Temperature", ["notify"]),
    0x2A9D: ("Weight Measurement", ["indicate"]),
    0x2A9E: ("Weight Scale Feature", ["read"]),
    0x2A9B: ("Body Composition Feature", ["read"]),
    0x2A9C: ("Body Composition Measurement", ["indicate"]),
    0x2A18: ("Glucose Measurement", ["notify"]),
    0x2A34: ("Glucose Measurement Context", ["notify"]),
    0x2A51: ("Glucose Feature", ["read"]),
    0x2A52: ("Record Access Control Point", ["write", "indicate"]),
    0x2A5E: ("PLX Spot-Check Measurement", ["indicate"]),
    0x2A5F: ("PLX Continuous Measurement", ["notify"]),
    0x2A60: ("PLX Features", ["read"]),
    0x2A37: ("Heart Rate Measurement", ["notify"]),
    0x2A38: ("Body Sensor Location", ["read"]),
    0x2A39: ("Heart Rate Control Point", ["write"]),
    0x2A19: ("Battery Level", ["read", "notify"]),
    0x2A29: ("Manufacturer Name String", ["read"]),
    0x2A24: ("Model Number String", ["read"]),
    0x2A25: ("Serial Number String", ["read"]),
    0x2A26: ("Firmware Revision String", ["read"]),
    0x2A27: ("Hardware Revision String", ["read"]),
    0x2A28: ("Software Revision String", ["read"]),
    0x2A23: ("System ID", ["read"]),
    0x2A2B: ("Current Time", ["read", "write", "notify"]),
    0x2A08: ("Date Time", ["read", "write"]),
}

# Service -> characteristics it always has (with a default static value for readable ones).
SERVICES = {
    0x1810: [(0x2A35, None), (0x2A36, None), (0x2A49, "0000")],  # Blood Pressure
    0x1809: [(0x2A1C, None), (0x2A1D, "02"), (0x2A1E, None)],  # Health Thermometer
    0x181D: [(0x2A9E, "00000000"), (0x2A9D, None)],  # Weight Scale
    0x181B: [(0x2A9B, "00000000"), (0x2A9C, None)],  # Body Composition
    0x1808: [(0x2A18, None), (0x2A34, None), (0x2A51, "0000"), (0x2A52, None)],  # Glucose
    0x1822: [(0x2A5E, None), (0x2A5F, None), (0x2A60, "0000")],  # Pulse Oximeter
    0x180D: [(0x2A37, None), (0x2A38, "01"), (0x2A39, None)],  # Heart Rate
    0x180F: [(0x2A19, None)],  # Battery
    0x180A: [(0x2A29, None), (0x2A24, None), (0x2A25, None), (0x2A26, None),
             (0x2A27, None), (0x2A28, None), (0x2A23, None)],  # Device Information
    0x1805: [(0x2A2B, None)],  # Current Time
}
# Characteristic -> service it lives in (for measurements naming a characteristic only).
CHAR_SERVICE = {c: s for s, cs in SERVICES.items() for c, _ in cs}
CHAR_SERVICE[0x2A08] = 0x1805

GLUCOSE_RECORD_CHARS = (0x2A18, 0x2A34)  # sent only through RACP
RACP = 0x2A52


def short_uuid(text):
    """'2A35', '0x2a35', 2A35 as int, or a full SIG-base UUID -> int."""
    if isinstance(text, int):
        return text
    t = str(text).strip().lower()
    if t.startswith("0x"):
        t = t[2:]
    if len(t) == 36:
        if not t.endswith(BASE_UUID_SUFFIX) or not t.startswith("0000"):
            raise ValueError(f"not a Bluetooth SIG base UUID: {text}")
        t = t[4:8]
    return int(t, 16)


def full_uuid(short):
    return f"0000{short:04x}{BASE_UUID_SUFFIX}"


class EventLog:
    """JSON lines: one object per event, flushed at once (the tests read it while we run)."""

    def __init__(self, path):
        self.f = open(path, "w", encoding="utf-8") if path else None  # noqa: SIM115

    def __call__(self, event, **fields):
        if not self.f:
            return
        rec = {"ts": round(time.time(), 3), "event": event}
        rec.update(fields)
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()


def load_vectors(path):
    if not path or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return {v["id"]: v for v in data.get("vectors", [])}


def resolve_measurement(m, vectors, where):
    """A measurement names 'vector' (an id in gatt.json) and/or gives 'characteristic' + 'hex'."""
    m = dict(m)
    vid = m.get("vector")
    if vid is not None:
        v = (vectors or {}).get(vid)
        if v is None and ("hex" not in m or "characteristic" not in m):
            raise SystemExit(f"{where}: vector {vid!r} not found (vectors file missing?) and no hex given")
        if v is not None:
            if v.get("characteristic") is None:
                raise SystemExit(f"{where}: vector {vid!r} is not a characteristic value")
            if "hex" in m and m["hex"].lower() != v["hex"].lower():
                raise SystemExit(f"{where}: hex {m['hex']} differs from vector {vid} ({v['hex']})")
            if "characteristic" in m and short_uuid(m["characteristic"]) != short_uuid(v["characteristic"]):
                raise SystemExit(f"{where}: characteristic differs from vector {vid} ({v['characteristic']})")
            m.setdefault("hex", v["hex"])
            m.setdefault("characteristic", v["characteristic"])
    if "hex" not in m or "characteristic" not in m:
        raise SystemExit(f"{where}: a measurement needs 'characteristic' and 'hex' (or 'vector')")
    m["char"] = short_uuid(m["characteristic"])
    m["bytes"] = bytes.fromhex(m["hex"])
    return m


def load_scenario(path, vectors_path):
    with open(path, encoding="utf-8") as f:
        sc = json.load(f)
    vectors = load_vectors(vectors_path)
    devices = sc.get("devices") or []
    if not devices:
        raise SystemExit(f"{path}: no devices")
    for i, d in enumerate(devices):
        where = f"{path}: devices[{i}]"
        if "address" not in d:
            raise SystemExit(f"{where}: no address")
        d["measurements"] = [
            resolve_measurement(m, vectors, f"{where}.measurements[{j}]")
            for j, m in enumerate(d.get("measurements") or [])
        ]
    return sc


def start_bus(socket_path, daemon_stderr=subprocess.DEVNULL):
    """dbus-daemon with a system-type config on a private socket; returns (proc, address, tmpdir)."""
    tmpdir = tempfile.mkdtemp(prefix="vb-bluez-sim-")
    sock = socket_path or os.path.join(tmpdir, "system_bus_socket")
    conf = os.path.join(tmpdir, "system.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write(f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <keep_umask/>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
""")
    daemon = shutil.which("dbus-daemon")
    if not daemon:
        raise SystemExit("dbus-daemon not found (Debian package: dbus-daemon)")

    def die_with_parent():
        try:  # PR_SET_PDEATHSIG: the daemon goes when we do, even on SIGKILL
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
        except OSError:
            pass

    proc = subprocess.Popen(  # noqa: S603
        [daemon, f"--config-file={conf}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=daemon_stderr,
        preexec_fn=die_with_parent,
    )
    line = proc.stdout.readline().decode().strip()
    if not line:
        raise SystemExit("dbus-daemon did not start")
    address = line.split(",")[0] if line.startswith("unix:path=") else f"unix:path={sock}"
    return proc, address, tmpdir


class Char:
    def __init__(self, short, service, handle, value=b""):
        self.short = short
        self.uuid = full_uuid(short)
        self.flags = list(CHARS.get(short, ("", ["read", "notify"]))[1])
        self.service = service
        self.handle = handle
        self.path = f"{service.path}/char{handle:04x}"
        self.value = value
        self.notifying = False
        self.obj = None
        self.desc = None

    def can_notify(self):
        return "notify" in self.flags or "indicate" in self.flags


class Service:
    def __init__(self, short, device, handle):
        self.short = short
        self.uuid = full_uuid(short)
        self.device = device
        self.handle = handle
        self.path = f"{device.path}/service{handle:04x}"
        self.chars = []
        self.obj = None


class Device:
    def __init__(self, cfg, adapter_path, timing):
        self.cfg = cfg
        self.address = cfg["address"].upper()
        self.name = cfg.get("name", "")
        self.path = f"{adapter_path}/dev_{self.address.replace(':', '_')}"
        self.services_short = [short_uuid(s) for s in cfg.get("services", [])]
        for m in cfg["measurements"]:  # a measurement's service is there even if not listed
            s = short_uuid(m["service"]) if "service" in m else CHAR_SERVICE.get(m["char"])
            if s is None:
                raise SystemExit(f"{self.address}: no service known for characteristic {m['char']:04X}; "
                                 "give the measurement a 'service'")
            m["svc"] = s
            if s not in self.services_short:
                self.services_short.append(s)
        adv = cfg.get("advertisedServices")
        self.advertised = [short_uuid(s) for s in adv] if adv is not None else list(self.services_short)
        self.timing = dict(timing)
        self.timing.update({k: v for k, v in cfg.items() if k in DEFAULT_TIMING})
        self.obj = None  # Device1 mock object while the device is known to "BlueZ"
        self.connected = False
        self.connections = 0  # how many connections so far (1-based number of the current one)
        self.fail_connects = int(cfg.get("failConnects", 0))
        self.services = []  # GATT objects, made on the first connection, kept afterwards
        self.chars = {}  # short uuid -> Char (first one)
        self.queue = []  # [(Char, bytes, what)]
        self.queue_timer = None
        self.disconnect_timer = None
        self.sent_this_connection = 0
        self.batches_this_connection = set()  # chars whose batch went out this connection
        self.ever_sent = set()  # measurement indexes sent at least once
        self.deleted_records = set()  # measurement indexes deleted via RACP
        self.written = {}  # short uuid -> last bytes written
        self.rssi = int(cfg.get("rssi", -60))
        self.adv_toggle = False
        self.appear_timer = None

    def chars_all(self):
        return [c for s in self.services for c in s.chars]


class Simulator:
    def __init__(self, dbus, GLib, mockobject, root, adapter_path, scenario, log):
        self.dbus = dbus
        self.GLib = GLib
        self.mo = mockobject
        self.root = root
        self.adapter_path = adapter_path
        self.adapter = mockobject.objects[adapter_path]
        self.log = log
        timing = dict(DEFAULT_TIMING)
        timing.update(scenario.get("timing") or {})
        self.devices = [Device(d, adapter_path, timing) for d in scenario["devices"]]
        self.discovery_filter = {}
        self.adv_timer = None
        self.SimObject = self._make_sim_object_class()

    # ---------- helpers ----------

    def _make_sim_object_class(self):
        dbus = self.dbus
        from xml.etree import ElementTree as ET

        base = self.mo.DBusMockObject

        class SimObject(base):
            """DBusMockObject whose introspection XML is laid out as BlueZ's: every <interface>
            before the child <node>s, inside an interface methods, then signals, then properties,
            no XML declaration. bluez-async finds services/characteristics/descriptors by
            introspecting (child nodes 'service*', 'char*', 'desc*') and parses the XML with
            serde-xml-rs, which is strict about interleaved elements."""

            @dbus.service.method(dbus.INTROSPECTABLE_IFACE, in_signature="", out_signature="s",
                                 path_keyword="object_path", connection_keyword="connection")
            def Introspect(self, object_path, connection):
                xml = base.Introspect(self, object_path, connection)
                tree = ET.fromstring(xml)
                out = ET.Element("node")
                for iface in tree.findall("interface"):
                    new = ET.SubElement(out, "interface", iface.attrib)
                    for tag in ("method", "signal", "property", "annotation"):
                        for el in iface.findall(tag):
                            new.append(el)
                for node in tree.findall("node"):
                    ET.SubElement(out, "node", node.attrib)
                body = ET.tostring(out, encoding="unicode")
                return ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
                        '"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n' + body)

        return SimObject

    def ay(self, data):
        return self.dbus.Array([self.dbus.Byte(b) for b in data], signature="y")

    def emit_props(self, obj, iface, changed, invalidated=()):
        self.dbus_emit(obj, PROPS_IFACE, "PropertiesChanged", "sa{sv}as",
                       [iface, self.dbus.Dictionary(changed, signature="sv"),
                        self.dbus.Array(list(invalidated), signature="s")])

    def dbus_emit(self, obj, iface, name, sig, args):
        obj.EmitSignal(iface, name, sig, args)

    def set_props(self, obj, iface, changed):
        for k, v in changed.items():
            obj.props[iface][k] = v
        self.emit_props(obj, iface, changed)

    def add_object(self, path, iface, props, methods):
        # What DBusMockObject.AddObject does, with our class (its mock_class= keyword is recent:
        # python-dbusmock 0.28 in Debian 12 lacks it).
        if path in self.mo.objects:
            raise self.error("org.freedesktop.DBus.Mock.NameError", f"object {path} already exists")
        obj = self.SimObject(self.root.bus_name, path, iface, props)
        obj.logfile = self.root.logfile
        obj.object_manager = self.root.object_manager
        obj.is_logfile_owner = False
        obj.AddMethods(iface, methods)
        self.mo.objects[path] = obj
        return obj

    def interfaces_added(self, obj):
        self.root.EmitSignal(OM_IFACE, "InterfacesAdded", "oa{sa{sv}}",
                             [self.dbus.ObjectPath(obj.path),
                              self.dbus.Dictionary(obj.props, signature="sa{sv}")])

    def interfaces_removed(self, obj):
        self.root.EmitSignal(OM_IFACE, "InterfacesRemoved", "oas",
                             [self.dbus.ObjectPath(obj.path),
                              self.dbus.Array(list(obj.props.keys()), signature="s")])

    def error(self, name, msg):
        return self.dbus.exceptions.DBusException(msg, name=name)

    def timeout(self, ms, fn, *args):
        def cb():
            fn(*args)
            return False
        return self.GLib.timeout_add(max(0, int(ms)), cb)

    def cancel(self, timer_id):
        if timer_id:
            self.GLib.source_remove(timer_id)

    def find(self, address):
        for d in self.devices:
            if d.address == address.upper():
                return d
        raise self.error("org.bluez.Error.DoesNotExist", f"no device {address} in the scenario")

    # ---------- set-up ----------

    def setup(self):
        dbus = self.dbus
        a = self.adapter
        a.AddMethods(ADAPTER_IFACE, [
            ("StartDiscovery", "", "", lambda obj: self.start_discovery()),
            ("StopDiscovery", "", "", lambda obj: self.stop_discovery()),
            ("SetDiscoveryFilter", "a{sv}", "", lambda obj, f: self.set_discovery_filter(f)),
            ("GetDiscoveryFilters", "", "as", lambda obj: dbus.Array(
                ["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable", "Pattern"],
                signature="s")),
            ("RemoveDevice", "o", "", lambda obj, p: self.remove_device(str(p))),
            ("ConnectDevice", "a{sv}", "o", lambda obj, props: self.connect_device(props)),
        ])
        self.root.AddMethods(SIM_IFACE, [
            ("ShowDevice", "s", "", lambda obj, addr: self.appear(self.find(addr))),
            ("DisconnectDevice", "s", "", lambda obj, addr: self.device_disconnect(self.find(addr))),
            ("Notify", "sss", "", lambda obj, addr, ch, hx: self.inject(self.find(addr), ch, hx)),
        ])
        for d in self.devices:
            if not d.cfg.get("appearOnDiscovery", True):
                self.appear(d)
        self.log("ready", adapter=self.adapter_path, devices=[d.address for d in self.devices])

    # ---------- adapter ----------

    def set_discovery_filter(self, f):
        allowed = {"UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable", "Pattern"}
        bad = [k for k in f if str(k) not in allowed]
        if bad:
            raise self.error("org.bluez.Error.InvalidArguments", f"Invalid arguments in method call: {bad}")
        if "Transport" in f and str(f["Transport"]) not in ("auto", "bredr", "le"):
            raise self.error("org.bluez.Error.InvalidArguments", "Invalid Transport")
        self.discovery_filter = {str(k): v for k, v in f.items()}
        self.log("set_discovery_filter", filter={k: _plain(v) for k, v in self.discovery_filter.items()})

    def filter_matches(self, d):
        uuids = {str(u).lower() for u in self.discovery_filter.get("UUIDs", [])}
        return not uuids or any(full_uuid(s) in uuids for s in d.advertised)

    def start_discovery(self):
        a = self.adapter
        if not bool(a.props[ADAPTER_IFACE]["Powered"]):
            raise self.error("org.bluez.Error.NotReady", "Resource Not Ready")
        if not bool(a.props[ADAPTER_IFACE]["Discovering"]):
            self.set_props(a, ADAPTER_IFACE, {"Discovering": self.dbus.Boolean(True)})
        self.log("start_discovery")
        for d in self.devices:
            if d.obj is None and d.appear_timer is None and self.filter_matches(d):
                d.appear_timer = self.timeout(d.timing["appearDelayMs"], self.appear, d)
        if self.adv_timer is None:
            ms = min([d.timing["advertiseIntervalMs"] for d in self.devices
                      if d.timing["advertiseIntervalMs"] > 0] or [0])
            if ms > 0:
                self.adv_timer = self.GLib.timeout_add(int(ms), self.advertise)

    def stop_discovery(self):
        a = self.adapter
        if bool(a.props[ADAPTER_IFACE]["Discovering"]):
            self.set_props(a, ADAPTER_IFACE, {"Discovering": self.dbus.Boolean(False)})
        self.log("stop_discovery")
        for d in self.devices:
            self.cancel(d.appear_timer)
            d.appear_timer = None
        self.cancel(self.adv_timer)
        self.adv_timer = None

    def advertise(self):
        """While discovering, visible and unconnected devices keep advertising: RSSI changes."""
        for d in self.devices:
            if d.obj is not None and not d.connected and d.timing["advertiseIntervalMs"] > 0:
                d.adv_toggle = not d.adv_toggle
                rssi = d.rssi - (1 if d.adv_toggle else 0)
                self.set_props(d.obj, DEVICE_IFACE, {"RSSI": self.dbus.Int16(rssi)})
        return True

    def appear(self, d):
        d.appear_timer = None
        if d.obj is not None:
            return
        dbus = self.dbus
        cfg = d.cfg
        props = {
            "Address": dbus.String(d.address),
            "AddressType": dbus.String(cfg.get("addressType", "public")),
            "Name": dbus.String(d.name),
            "Alias": dbus.String(d.name or d.address.replace(":", "-")),
            "Paired": dbus.Boolean(bool(cfg.get("paired", False))),
            "Bonded": dbus.Boolean(bool(cfg.get("paired", False))),
            "Trusted": dbus.Boolean(bool(cfg.get("paired", False))),
            "Blocked": dbus.Boolean(False),
            "LegacyPairing": dbus.Boolean(False),
            "Connected": dbus.Boolean(False),
            "ServicesResolved": dbus.Boolean(False),
            "UUIDs": dbus.Array([full_uuid(s) for s in d.advertised], signature="s"),
            "RSSI": dbus.Int16(d.rssi),
            "Adapter": dbus.ObjectPath(self.adapter_path),
        }
        if not d.name:
            del props["Name"]
        if "appearance" in cfg:
            props["Appearance"] = dbus.UInt16(int(cfg["appearance"]))
        if "txPower" in cfg:
            props["TxPower"] = dbus.Int16(int(cfg["txPower"]))
        if "manufacturerData" in cfg:
            props["ManufacturerData"] = dbus.Dictionary(
                {dbus.UInt16(int(str(k), 0)): self.ay(bytes.fromhex(v)) for k, v in cfg["manufacturerData"].items()},
                signature="qv")
        d.obj = self.add_object(d.path, DEVICE_IFACE, props, [
            ("Connect", "", "", lambda obj: self.connect(d)),
            ("Disconnect", "", "", lambda obj: self.client_disconnect(d)),
            ("ConnectProfile", "s", "", lambda obj, u: self.connect(d)),
            ("DisconnectProfile", "s", "", lambda obj, u: None),
            ("Pair", "", "", lambda obj: self.pair(d)),
            ("CancelPairing", "", "", lambda obj: None),
        ])
        self.interfaces_added(d.obj)
        self.log("device_appeared", address=d.address, path=d.path)

    def remove_device(self, path):
        for d in self.devices:
            if d.path == path and d.obj is not None:
                if d.connected:
                    self.drop_connection(d, "client")
                for s in d.services:
                    for c in s.chars:
                        if c.desc is not None:
                            self.interfaces_removed(c.desc)
                            self.root.RemoveObject(c.desc.path)
                            c.desc = None
                        self.interfaces_removed(c.obj)
                        self.root.RemoveObject(c.path)
                    self.interfaces_removed(s.obj)
                    self.root.RemoveObject(s.path)
                d.services, d.chars = [], {}
                self.interfaces_removed(d.obj)
                self.root.RemoveObject(d.path)
                d.obj = None
                self.log("device_removed", address=d.address)
                return
        raise self.error("org.bluez.Error.DoesNotExist", "Does Not Exist")

    def connect_device(self, props):
        """Adapter1.ConnectDevice [experimental]: as BlueZ, AlreadyExists for a known device."""
        address = str(props.get("Address", "")).upper()
        d = self.find(address)
        if d.obj is not None:
            raise self.error("org.bluez.Error.AlreadyExists", "Already Exists")
        self.appear(d)
        self.connect(d)
        return self.dbus.ObjectPath(d.path)

    # ---------- device ----------

    def pair(self, d):
        self.set_props(d.obj, DEVICE_IFACE, {"Paired": self.dbus.Boolean(True),
                                            "Bonded": self.dbus.Boolean(True)})

    def connect(self, d):
        if d.connected:
            return
        if d.fail_connects > 0:
            d.fail_connects -= 1
            self.log("connect_failed", address=d.address)
            raise self.error("org.bluez.Error.Failed", "le-connection-abort-by-local")
        d.connected = True
        d.connections += 1
        d.sent_this_connection = 0
        d.batches_this_connection = set()
        self.set_props(d.obj, DEVICE_IFACE, {"Connected": self.dbus.Boolean(True)})
        self.log("connect", address=d.address, connection=d.connections)
        if not d.services:
            self.build_gatt(d)
        self.timeout(d.timing["servicesResolvedDelayMs"], self.services_resolved, d, d.connections)

    def services_resolved(self, d, connection):
        if not d.connected or d.connections != connection:
            return
        all_uuids = list(d.advertised) + [s for s in d.services_short if s not in d.advertised]
        changed = {"ServicesResolved": self.dbus.Boolean(True)}
        if all_uuids != d.advertised:
            changed["UUIDs"] = self.dbus.Array([full_uuid(s) for s in all_uuids], signature="s")
        self.set_props(d.obj, DEVICE_IFACE, changed)
        self.log("services_resolved", address=d.address)

    def client_disconnect(self, d):
        if d.connected:
            self.drop_connection(d, "client")

    def device_disconnect(self, d):
        if d.connected:
            self.drop_connection(d, "device")

    def drop_connection(self, d, by):
        dbus = self.dbus
        self.cancel(d.queue_timer)
        self.cancel(d.disconnect_timer)
        d.queue_timer = d.disconnect_timer = None
        dropped = len(d.queue)
        d.queue = []
        for c in d.chars_all():
            if c.notifying:
                c.notifying = False
                self.set_props(c.obj, CHAR_IFACE, {"Notifying": dbus.Boolean(False)})
                if c.desc is not None:
                    c.desc.props[DESC_IFACE]["Value"] = self.ay(b"\x00\x00")
        d.connected = False
        self.set_props(d.obj, DEVICE_IFACE, {"ServicesResolved": dbus.Boolean(False)})
        self.set_props(d.obj, DEVICE_IFACE, {"Connected": dbus.Boolean(False)})
        self.log("disconnect", address=d.address, by=by, connection=d.connections, unsent=dropped)

    # ---------- GATT objects ----------

    def build_gatt(self, d):
        dbus = self.dbus
        cfg = d.cfg
        handle = 0x000A
        static = {
            0x2A29: cfg.get("manufacturer", "").encode(),
            0x2A24: cfg.get("model", "").encode(),
            0x2A25: cfg.get("serialNumber", "").encode(),
            0x2A26: cfg.get("firmwareRevision", "").encode(),
            0x2A27: cfg.get("hardwareRevision", "").encode(),
            0x2A28: cfg.get("softwareRevision", "").encode(),
            0x2A23: bytes.fromhex(cfg["systemId"]) if "systemId" in cfg else system_id(d.address),
            0x2A19: bytes([int(cfg.get("battery", 100))]),
        }
        given = {short_uuid(k) for k in (cfg.get("values") or {})}
        for k, v in (cfg.get("values") or {}).items():
            static[short_uuid(k)] = bytes.fromhex(v)
        optional_dis = {0x2A25: "serialNumber", 0x2A26: "firmwareRevision",
                        0x2A27: "hardwareRevision", 0x2A28: "softwareRevision"}
        for s_short in d.services_short:
            svc = Service(s_short, d, handle)
            handle += 1
            wanted = [(c, v) for c, v in SERVICES.get(s_short, [])]
            for m in cfg["measurements"]:
                if m["svc"] == s_short and m["char"] not in [c for c, _ in wanted]:
                    wanted.append((m["char"], None))
            for c_short, default in wanted:
                if c_short in optional_dis and optional_dis[c_short] not in cfg and c_short not in given:
                    continue
                value = static.get(c_short, bytes.fromhex(default) if default else b"")
                ch = Char(c_short, svc, handle, value)
                handle += 2  # declaration + value
                if ch.can_notify():
                    handle += 1  # CCCD
                svc.chars.append(ch)
                d.chars.setdefault(c_short, ch)
            handle += 1
            d.services.append(svc)
            svc.obj = self.add_object(svc.path, SERVICE_IFACE, {
                "UUID": dbus.String(svc.uuid),
                "Device": dbus.ObjectPath(d.path),
                "Primary": dbus.Boolean(True),
                "Includes": dbus.Array([], signature="o"),
                "Handle": dbus.UInt16(svc.handle),
            }, [])
            self.interfaces_added(svc.obj)
            for ch in svc.chars:
                ch.obj = self.add_object(ch.path, CHAR_IFACE, {
                    "UUID": dbus.String(ch.uuid),
                    "Service": dbus.ObjectPath(svc.path),
                    "Value": self.ay(ch.value),
                    "Notifying": dbus.Boolean(False),
                    "Flags": dbus.Array(ch.flags, signature="s"),
                    "MTU": dbus.UInt16(int(cfg.get("mtu", 23))),
                    "Handle": dbus.UInt16(ch.handle + 1),
                }, [
                    ("ReadValue", "a{sv}", "ay", lambda obj, o, ch=ch: self.read_value(ch, o)),
                    ("WriteValue", "aya{sv}", "", lambda obj, v, o, ch=ch: self.write_value(ch, v, o)),
                    ("StartNotify", "", "", lambda obj, ch=ch: self.start_notify(ch)),
                    ("StopNotify", "", "", lambda obj, ch=ch: self.stop_notify(ch)),
                    ("AcquireWrite", "a{sv}", "hq", lambda obj, o: self._not_supported()),
                    ("AcquireNotify", "a{sv}", "hq", lambda obj, o: self._not_supported()),
                ])
                self.interfaces_added(ch.obj)
                if ch.can_notify():
                    dpath = f"{ch.path}/desc{ch.handle + 2:04x}"
                    ch.desc = self.add_object(dpath, DESC_IFACE, {
                        "UUID": dbus.String(full_uuid(0x2902)),
                        "Characteristic": dbus.ObjectPath(ch.path),
                        "Value": self.ay(b"\x00\x00"),
                        "Handle": dbus.UInt16(ch.handle + 2),
                    }, [
                        ("ReadValue", "a{sv}", "ay", lambda obj, o: obj.props[DESC_IFACE]["Value"]),
                        ("WriteValue", "aya{sv}", "", lambda obj, v, o: self._not_permitted("Write")),
                    ])
                    self.interfaces_added(ch.desc)
        self.log("gatt_exported", address=d.address,
                 services=[f"{s.short:04x}" for s in d.services],
                 characteristics=[f"{c.short:04x}" for s in d.services for c in s.chars])

    def _not_supported(self):
        raise self.error("org.bluez.Error.NotSupported", "Operation is not supported")

    def _not_permitted(self, what):
        raise self.error("org.bluez.Error.NotPermitted", f"{what} not permitted")

    def _require_connected(self, ch):
        if not ch.service.device.connected:
            raise self.error("org.bluez.Error.Failed", "Not connected")

    def read_value(self, ch, options):
        self._require_connected(ch)
        if "read" not in ch.flags:
            self._not_permitted("Read")
        offset = int(options.get("offset", 0)) if options else 0
        value = ch.value
        if ch.short == 0x2A2B and 0x2A2B not in ch.service.device.written:
            value = current_time_bytes()
        if offset > len(value):
            raise self.error("org.bluez.Error.InvalidOffset", "Invalid offset")
        self.log("read", address=ch.service.device.address, characteristic=f"{ch.short:04x}",
                 hex=value[offset:].hex())
        return self.ay(value[offset:])

    def write_value(self, ch, value, options):
        d = ch.service.device
        self._require_connected(ch)
        data = bytes(value)
        wtype = str(options.get("type", "")) if options else ""
        if wtype not in ("", "request", "command", "reliable"):
            raise self.error("org.bluez.Error.InvalidArguments", f"Invalid write type {wtype}")
        if "write" not in ch.flags and "write-without-response" not in ch.flags:
            self._not_permitted("Write")
        if wtype == "command" and "write-without-response" not in ch.flags:
            raise self.error("org.bluez.Error.NotSupported", "Operation is not supported")
        if not wtype:
            wtype = "request" if "write" in ch.flags else "command"
        self.log("write", address=d.address, characteristic=f"{ch.short:04x}", hex=data.hex(), type=wtype)
        d.written[ch.short] = data
        if ch.short == RACP:
            self.racp(d, ch, data)
        else:
            ch.value = data
            ch.obj.props[CHAR_IFACE]["Value"] = self.ay(data)

    def start_notify(self, ch):
        d = ch.service.device
        self._require_connected(ch)
        if not ch.can_notify():
            self._not_supported()
        self.log("start_notify", address=d.address, characteristic=f"{ch.short:04x}")
        if not ch.notifying:
            ch.notifying = True
            self.set_props(ch.obj, CHAR_IFACE, {"Notifying": self.dbus.Boolean(True)})
            ch.desc.props[DESC_IFACE]["Value"] = self.ay(
                b"\x02\x00" if "indicate" in ch.flags else b"\x01\x00")
        if ch.short in GLUCOSE_RECORD_CHARS or ch.short in d.batches_this_connection:
            return  # glucose records go out on a RACP request; a batch goes once a connection
        d.batches_this_connection.add(ch.short)
        batch = []
        for i, m in enumerate(d.cfg["measurements"]):
            if m["char"] != ch.short or not self.due(d, i, m):
                continue
            batch.append((i, m))
        items = []
        for _ in range(max(1, int(d.cfg.get("repeat", 1)))):
            items += [(ch, m["bytes"], f"measurement:{i}") for i, m in batch]
        self.enqueue(d, items)

    def stop_notify(self, ch):
        self.log("stop_notify", address=ch.service.device.address, characteristic=f"{ch.short:04x}")
        if not ch.notifying:  # BlueZ's answer; btleplug's unsubscribe takes it as success
            raise self.error("org.bluez.Error.Failed", "No notify session started")
        if ch.notifying:
            ch.notifying = False
            self.set_props(ch.obj, CHAR_IFACE, {"Notifying": self.dbus.Boolean(False)})
            if ch.desc is not None:
                ch.desc.props[DESC_IFACE]["Value"] = self.ay(b"\x00\x00")

    def due(self, d, i, m):
        """Is measurement i sent (or, for glucose, stored) in the current connection?"""
        if "connection" in m:
            n = int(m["connection"])
            if m["char"] in GLUCOSE_RECORD_CHARS:
                return d.connections >= n and i not in d.deleted_records
            return d.connections == n
        if m["char"] in GLUCOSE_RECORD_CHARS:
            return i not in d.deleted_records
        replay = d.cfg.get("replayOnReconnect", True)
        return replay or i not in d.ever_sent

    def inject(self, d, char, hexdata):
        ch = d.chars.get(short_uuid(char))
        if ch is None or not d.connected:
            raise self.error("org.bluez.Error.Failed", "Not connected or no such characteristic")
        self.enqueue(d, [(ch, bytes.fromhex(hexdata), "injected")])

    # ---------- sending ----------

    def enqueue(self, d, items):
        if not items:
            return
        self.cancel(d.disconnect_timer)
        d.disconnect_timer = None
        d.queue.extend(items)
        if d.queue_timer is None:
            d.queue_timer = self.GLib.timeout_add(int(d.timing["notifyDelayMs"]), self.send_next, d)

    def send_next(self, d):
        if not d.queue or not d.connected:
            d.queue_timer = None
            return False
        ch, data, what = d.queue.pop(0)
        if what.startswith(("measurement:", "racp-record:")):
            d.ever_sent.add(int(what.split(":")[1]))
        if ch.notifying:
            ch.value = data
            ch.obj.props[CHAR_IFACE]["Value"] = self.ay(data)
            self.emit_props(ch.obj, CHAR_IFACE, {"Value": self.ay(data)})
            d.sent_this_connection += 1
            self.log("notify", address=d.address, characteristic=f"{ch.short:04x}", hex=data.hex(), what=what)
        else:
            self.log("dropped", address=d.address, characteristic=f"{ch.short:04x}", hex=data.hex(),
                     what=what, reason="notifications not enabled")
        if d.queue:
            d.queue_timer = self.GLib.timeout_add(int(d.timing["notifyIntervalMs"]), self.send_next, d)
            return False
        d.queue_timer = None
        if d.cfg.get("disconnectAfterSend") and d.sent_this_connection > 0:
            d.disconnect_timer = self.timeout(d.timing["disconnectDelayMs"], self._disconnect_after_send, d)
        return False

    def _disconnect_after_send(self, d):
        d.disconnect_timer = None
        if not d.queue:
            self.device_disconnect(d)

    # ---------- glucose RACP ----------

    def racp(self, d, ch, data):
        if not ch.notifying:  # ATT error: CCC descriptor improperly configured
            raise self.error("org.bluez.Error.Failed", "Operation failed with ATT error: 0xfd")
        if any(what == "racp-response" for _, _, what in d.queue):  # procedure already in progress
            if not (len(data) >= 1 and data[0] == 0x03):
                raise self.error("org.bluez.Error.Failed", "Operation failed with ATT error: 0xfe")
        if len(data) < 2:
            self.enqueue(d, [(ch, bytes([0x06, 0x00, data[0] if data else 0, 0x05]), "racp-response")])
            return
        op, operator, operand = data[0], data[1], data[2:]

        def respond(code):
            self.enqueue(d, [(ch, bytes([0x06, 0x00, op, code]), "racp-response")])

        if op == 0x03:  # abort
            if operator != 0x00:
                return respond(0x03)
            d.queue = [q for q in d.queue if not q[2].startswith("racp")]
            self.log("racp", address=d.address, op=op, operator=operator, records=0)
            return respond(0x01)
        if op not in (0x01, 0x02, 0x04):
            return respond(0x02)  # op code not supported
        selected, code = self.racp_select(d, operator, operand)
        if code is not None:
            return respond(code)
        self.log("racp", address=d.address, op=op, operator=operator, records=len(selected))
        if op == 0x04:  # number of stored records
            self.enqueue(d, [(ch, bytes([0x05, 0x00]) + len(selected).to_bytes(2, "little"), "racp-response")])
            return None
        if op == 0x02:  # delete
            d.deleted_records.update(i for i, _ in selected)
            for i, m in enumerate(d.cfg["measurements"]):
                if m["char"] == 0x2A34 and i not in d.deleted_records and \
                        glucose_seq(m["bytes"]) in {glucose_seq(s["bytes"]) for _, s in selected}:
                    d.deleted_records.add(i)
            return respond(0x01)
        if not selected:
            return respond(0x06)  # no records found
        gm = d.chars.get(0x2A18)
        gc = d.chars.get(0x2A34)
        items = []
        for _ in range(max(1, int(d.cfg.get("repeat", 1)))):
            for i, m in selected:
                items.append((gm, m["bytes"], f"racp-record:{i}"))
                seq = glucose_seq(m["bytes"])
                for j, c in enumerate(d.cfg["measurements"]):
                    if c["char"] == 0x2A34 and gc is not None and self.due(d, j, c) \
                            and glucose_seq(c["bytes"]) == seq:
                        items.append((gc, c["bytes"], f"racp-record:{j}"))
        items.append((ch, bytes([0x06, 0x00, 0x01, 0x01]), "racp-response"))
        self.enqueue(d, items)
        return None

    def racp_select(self, d, operator, operand):
        records = [(i, m) for i, m in enumerate(d.cfg["measurements"])
                   if m["char"] == 0x2A18 and self.due(d, i, m)]
        if operator == 0x00:
            return [], 0x03  # invalid operator
        if operator == 0x01:
            return (records, None) if not operand else ([], 0x05)
        if operator in (0x05, 0x06):
            if operand:
                return [], 0x05
            if not records:
                return [], None
            return ([records[0]] if operator == 0x05 else [records[-1]]), None
        if operator in (0x02, 0x03, 0x04):
            if not operand:
                return [], 0x05
            if operand[0] != 0x01:
                return [], 0x09  # only the sequence number filter
            need = 5 if operator == 0x04 else 3
            if len(operand) != need:
                return [], 0x05
            a = int.from_bytes(operand[1:3], "little")
            if operator == 0x02:
                return [r for r in records if glucose_seq(r[1]["bytes"]) <= a], None
            if operator == 0x03:
                return [r for r in records if glucose_seq(r[1]["bytes"]) >= a], None
            b = int.from_bytes(operand[3:5], "little")
            return [r for r in records if a <= glucose_seq(r[1]["bytes"]) <= b], None
        return [], 0x04  # operator not supported


def glucose_seq(data):
    return int.from_bytes(data[1:3], "little") if len(data) >= 3 else -1


def system_id(address):
    """System ID (0x2A23) as devices derive it from their public address: the three low octets,
    FE FF, the three high octets; little-endian on the wire."""
    b = bytes.fromhex(address.replace(":", ""))  # big-endian, as written
    return bytes(reversed(b[3:])) + b"\xfe\xff" + bytes(reversed(b[:3]))


def current_time_bytes():
    t = datetime.datetime.now()
    return t.year.to_bytes(2, "little") + bytes([t.month, t.day, t.hour, t.minute, t.second,
                                                   t.isoweekday(), 0, 0])


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, bool):
        return v
    try:
        import dbus
        if isinstance(v, dbus.Boolean):
            return bool(v)
    except ImportError:
        pass
    if isinstance(v, int):
        return int(v)
    return str(v)


def ensure_modules():
    """dbus-python and PyGObject come from Debian (python3-dbus, python3-gi); a python3 that is
    not Debian's (pyenv, a venv without --system-site-packages) lacks them: run again under
    /usr/bin/python3 then."""
    try:
        import dbus  # noqa: F401
        import dbusmock  # noqa: F401
        import gi  # noqa: F401
        return
    except ImportError as e:
        missing = e
    system = "/usr/bin/python3"
    if os.path.exists(system) and not os.environ.get("BLUEZ_SIM_REEXEC") and \
            os.path.realpath(sys.executable) != os.path.realpath(system):
        os.environ["BLUEZ_SIM_REEXEC"] = "1"
        os.execv(system, [system, os.path.abspath(__file__)] + sys.argv[1:])
    raise SystemExit(f"bluez_sim: {missing}. Install: apt-get install dbus-daemon python3-dbus python3-gi "
                     "python3-dbusmock (or pip install python-dbusmock in a venv made by /usr/bin/python3 "
                     "-m venv --system-site-packages)")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", help="scenario JSON file (see README.md)")
    p.add_argument("--log", help="JSON-lines event log (connects, reads, writes, notifications...; truncated at start)")
    p.add_argument("--dbus-log", help="python-dbusmock's own call log (default: discarded)")
    p.add_argument("--vectors", default=os.environ.get("VITALBRIDGE_GATT_VECTORS", DEFAULT_VECTORS),
                   help="gatt.json test vectors, for measurements naming a 'vector' (default: %(default)s)")
    p.add_argument("--socket", help="path of the bus socket (default: in a new temporary directory)")
    p.add_argument("--adapter", default="hci0")
    p.add_argument("--exit-on-stdin-eof", action="store_true",
                   help="also stop when stdin reaches end of file (give it a pipe that the test holds: "
                        "the simulator then goes away with the test even if the test never kills it)")
    return p.parse_args()


def main():
    args = parse_args()
    ensure_modules()
    scenario = load_scenario(args.scenario, args.vectors)
    log = EventLog(args.log)

    # dbus-daemon's own complaints (e.g. "Failed to set fd limit" when not privileged) are noise.
    daemon_err = open(args.dbus_log, "ab") if args.dbus_log else subprocess.DEVNULL  # noqa: SIM115
    daemon, address, tmpdir = start_bus(args.socket, daemon_err)
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = address

    import dbus
    import dbus.mainloop.glib
    import dbus.service
    from dbusmock import mockobject
    from gi.repository import GLib

    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    loop = GLib.MainLoop()

    def stop(*_):
        loop.quit()
        return False

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, stop, None)

    if args.exit_on_stdin_eof:
        def on_stdin(fd, cond):
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                loop.quit()
                return False
            return True

        GLib.io_add_watch(0, GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR, on_stdin)

    try:
        bus = dbus.bus.BusConnection(address)
        bus.add_signal_receiver(lambda *a: loop.quit(), signal_name="Disconnected",
                                path="/org/freedesktop/DBus/Local",
                                dbus_interface="org.freedesktop.DBus.Local")
        name = dbus.service.BusName("org.bluez", bus, do_not_queue=True)
        # python-dbusmock logs every call to stdout unless given a file: keep stdout clean.
        root = mockobject.DBusMockObject(name, "/", mockobject.OBJECT_MANAGER_IFACE, {},
                                         args.dbus_log or os.devnull, True)
        mockobject.objects["/"] = root
        root.AddTemplate("bluez5", {"enable_advertise_api": False, "enable_monitor_api": False})
        adapter_path = root.AddAdapter(args.adapter, scenario.get("adapterAlias", "vitalbridge-sim"))
        sim = Simulator(dbus, GLib, mockobject, root, str(adapter_path), scenario, log)
        sim.setup()

        sys.stdout.write(f"DBUS_SYSTEM_BUS_ADDRESS={address}\n")
        sys.stdout.flush()
        loop.run()
    finally:
        log("stopped")
        daemon.terminate()
        try:
            daemon.wait(timeout=2)
        except subprocess.TimeoutExpired:
            daemon.kill()
        shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    main()
