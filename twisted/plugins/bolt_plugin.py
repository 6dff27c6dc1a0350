"""twistd dropin: ``twistd -n bolt --host ... --port ...`` (see bolt.service)."""

from twisted.application.service import ServiceMaker

bolt = ServiceMaker("bolt", "bolt.service", "Bolt sandbox server (HTTPS API and TCP shells)", "bolt")
