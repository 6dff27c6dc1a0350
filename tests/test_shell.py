"""The TCP shell without root: tickets, the telnet codec, the connection protocol, the gateway's
decisions, the PTY wrapper over a real ``os.openpty()`` pair, and the manager's shell methods.

Time is a :class:`task.Clock` everywhere; connections are :class:`StringTransport`\\ s; nothing here
opens a socket.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import struct
import termios

from treq.testing import StubTreq
from twisted.internet import defer, error, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from bolt import shells as shells_module
from bolt.errors import Conflict, NotFound, Unavailable
from bolt.host.terminal import Terminal
from bolt.shell import protocol as shellproto
from bolt.shell import telnet
from bolt.shell.gateway import ShellGateway
from bolt.shell.protocol import ShellFactory, ShellRefused
from bolt.shell.telnet import (ASK_TTYPE, DO, DONT, ECHO, GREETING, IAC, NAWS, SB, SE, SGA, TTYPE, WILL, WONT,
                               OptionAnswer, TelnetCodec, TerminalType, WindowSize)
from bolt.shells import ShellTickets
from tests.helpers import PASSWORD, World

PORTS = frozenset(range(30001, 30011))


class Listener:
    """A fake ``listen(port, ticket)``: records which ports are open; ``refuse`` ports raise."""

    def __init__(self, refuse=()) -> None:
        self.open: dict[int, object] = {}
        self.opened: list[int] = []
        self.closed: list[int] = []
        self.refuse = set(refuse)
        self.attempts: list[int] = []

    def __call__(self, port, ticket):
        self.attempts.append(port)
        if port in self.refuse:
            raise error.CannotListenError("127.0.0.1", port, OSError(98, "Address already in use"))
        if port in self.open:
            raise AssertionError(f"port {port} opened twice")
        self.open[port] = ticket
        self.opened.append(port)

        def close():
            del self.open[port]
            self.closed.append(port)

        return close


def tickets(clock=None, ports=PORTS, expiry=60.0, **kwargs) -> ShellTickets:
    return ShellTickets(clock or task.Clock(), ports, expiry, **kwargs)


# ---------------------------------------------------------------------------------------------------
# Tickets
# ---------------------------------------------------------------------------------------------------


class TicketTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.listen = Listener()
        self.tickets = tickets(self.clock)

    def test_issue_gives_256_random_bits_and_keeps_only_a_digest(self):
        token, ticket = self.tickets.issue("p", "s", self.listen)
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        self.assertEqual(len(raw), 32)
        self.assertEqual(ticket.digest, hashlib.sha256(token.encode()).digest())
        self.assertNotIn(token, repr(ticket))
        self.assertNotIn(token, repr(vars(ticket)))
        self.assertNotIn(token.encode(), ticket.digest)
        self.assertEqual((ticket.project, ticket.sandbox, ticket.key), ("p", "s", ("p", "s")))
        self.assertEqual(ticket.expires_at, 1060.0)
        other, _ = self.tickets.issue("p", "s", self.listen)
        self.assertNotEqual(token, other)

    def test_issue_opens_a_listener_on_a_port_of_the_range(self):
        _, ticket = self.tickets.issue("p", "s", self.listen)
        self.assertIn(ticket.port, PORTS)
        self.assertEqual(self.listen.open, {ticket.port: ticket})
        self.assertEqual(self.tickets.pending(), [ticket])

    def test_pending_tickets_never_share_a_port(self):
        ports = [self.tickets.issue("p", "s", self.listen)[1].port for _ in PORTS]
        self.assertEqual(sorted(ports), sorted(PORTS))

    def test_ports_are_not_handed_out_in_order(self):
        many = tickets(self.clock, frozenset(range(40000, 41000)))
        ports = [many.issue("p", "s", self.listen)[1].port for _ in range(20)]
        self.assertNotEqual(ports, sorted(ports))

    def test_redeem_with_the_right_token_ends_the_ticket_and_frees_the_port(self):
        token, ticket = self.tickets.issue("p", "s", self.listen)
        self.assertIs(self.tickets.redeem(ticket.port, token), ticket)
        self.assertTrue(ticket.ended)
        self.assertEqual(self.listen.closed, [ticket.port])
        self.assertEqual(self.listen.open, {})
        self.assertEqual(self.tickets.pending(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the expiry timer went with it

    def test_a_token_is_good_for_one_connection_only(self):
        token, ticket = self.tickets.issue("p", "s", self.listen)
        self.assertIs(self.tickets.redeem(ticket.port, token), ticket)
        self.assertIsNone(self.tickets.redeem(ticket.port, token))

    def test_two_racing_redeems_of_one_token_exactly_one_wins(self):
        token, ticket = self.tickets.issue("p", "s", self.listen)
        results = [self.tickets.redeem(ticket.port, token) for _ in range(2)]
        self.assertEqual([r for r in results if r is not None], [ticket])
        self.assertEqual(results.count(None), 1)

    def test_a_wrong_token_changes_nothing(self):
        token, ticket = self.tickets.issue("p", "s", self.listen)
        for wrong in ["", "x", token[:-1], token + "x", token.upper() if token.upper() != token else "y",
                      "\udcff"]:
            self.assertIsNone(self.tickets.redeem(ticket.port, wrong))
        self.assertFalse(ticket.ended)
        self.assertEqual(self.listen.open, {ticket.port: ticket})
        self.assertIs(self.tickets.redeem(ticket.port, token), ticket)

    def test_a_token_is_bound_to_its_own_port(self):
        token_a, a = self.tickets.issue("p", "a", self.listen)
        token_b, b = self.tickets.issue("p", "b", self.listen)
        self.assertIsNone(self.tickets.redeem(b.port, token_a))
        self.assertIsNone(self.tickets.redeem(a.port, token_b))
        self.assertIsNone(self.tickets.redeem(39999, token_a))
        self.assertIs(self.tickets.redeem(a.port, token_a), a)
        self.assertEqual(a.key, ("p", "a"))

    def test_tokens_are_compared_in_constant_time_on_digests(self):
        calls = []
        real = shells_module.hmac.compare_digest

        def spy(a, b):
            calls.append((a, b))
            return real(a, b)

        self.patch(shells_module.hmac, "compare_digest", spy)
        token, ticket = self.tickets.issue("p", "s", self.listen)
        self.tickets.redeem(ticket.port, "wrong")
        self.tickets.redeem(ticket.port, token)
        self.assertEqual(len(calls), 2)
        for a, b in calls:
            self.assertEqual((len(a), len(b)), (32, 32))
            self.assertEqual(b, ticket.digest)

    def test_expiry_closes_the_listener_and_frees_the_port(self):
        token, ticket = self.tickets.issue("p", "s", self.listen)
        self.clock.advance(59.9)
        self.assertEqual(list(self.listen.open), [ticket.port])
        self.clock.advance(0.1)
        self.assertTrue(ticket.ended)
        self.assertEqual(self.listen.closed, [ticket.port])
        self.assertEqual(self.tickets.pending(), [])
        self.assertIsNone(self.tickets.redeem(ticket.port, token))

    def test_an_expired_token_is_refused_even_before_its_timer_runs(self):
        token, ticket = self.tickets.issue("p", "s", self.listen)
        self.clock.rightNow += 60  # time moved on; the timer has not run yet
        self.assertIsNone(self.tickets.redeem(ticket.port, token))
        self.assertTrue(ticket.ended)
        self.assertEqual(self.listen.closed, [ticket.port])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_exhausted_range_is_unavailable_with_a_clear_message(self):
        few = tickets(self.clock, frozenset({30001, 30002}))
        token, first = few.issue("p", "s", self.listen)
        few.issue("p", "s", self.listen)
        e = self.assertRaises(Unavailable, few.issue, "p", "s", self.listen)
        self.assertIn("shell_port_range", str(e))
        self.assertIn("no free port", str(e))
        few.redeem(first.port, token)  # the port is back in the pool
        _, again = few.issue("p", "s", self.listen)
        self.assertEqual(again.port, first.port)

    def test_expired_and_revoked_ports_go_back_to_the_pool(self):
        few = tickets(self.clock, frozenset({30001}))
        few.issue("p", "s", self.listen)
        self.assertRaises(Unavailable, few.issue, "p", "s", self.listen)
        self.clock.advance(60)
        few.issue("p", "s", self.listen)
        few.revoke("p", "s")
        _, ticket = few.issue("p", "s", self.listen)
        self.assertEqual(ticket.port, 30001)

    def test_a_port_whose_listen_fails_is_skipped(self):
        listen = Listener(refuse=PORTS - {30007})
        _, ticket = self.tickets.issue("p", "s", listen)
        self.assertEqual(ticket.port, 30007)
        self.assertEqual(listen.open, {30007: ticket})
        self.assertEqual(listen.attempts[-1], 30007)  # busy ports were tried, then skipped
        self.assertEqual(self.tickets.pending(), [ticket])

    def test_no_usable_port_is_unavailable(self):
        listen = Listener(refuse=PORTS)
        self.assertRaises(Unavailable, self.tickets.issue, "p", "s", listen)
        self.assertEqual(self.tickets.pending(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_revoke_ends_the_tickets_of_one_sandbox_or_of_a_project(self):
        ta, a = self.tickets.issue("p", "a", self.listen)
        _, a2 = self.tickets.issue("p", "a", self.listen)
        tb, b = self.tickets.issue("p", "b", self.listen)
        tq, q = self.tickets.issue("q", "a", self.listen)
        self.assertEqual(self.tickets.revoke("p", "a"), 2)
        self.assertTrue(a.ended and a2.ended)
        self.assertIsNone(self.tickets.redeem(a.port, ta))
        self.assertEqual(sorted(self.listen.open), sorted([b.port, q.port]))
        self.assertEqual(self.tickets.revoke("p"), 1)
        self.assertIsNone(self.tickets.redeem(b.port, tb))
        self.assertIs(self.tickets.redeem(q.port, tq), q)
        self.assertEqual(self.tickets.revoke("p", "a"), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_all_closes_every_listener(self):
        for name in "abc":
            self.tickets.issue("p", name, self.listen)
        self.tickets.close_all()
        self.assertEqual(self.listen.open, {})
        self.assertEqual(self.tickets.pending(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_listener_that_fails_to_close_still_frees_its_port(self):
        token, ticket = self.tickets.issue("p", "s", lambda port, t: (lambda: 1 / 0))
        self.assertIs(self.tickets.redeem(ticket.port, token), ticket)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.tickets.pending(), [])

    def test_session_limits_per_sandbox_and_overall(self):
        limited = tickets(self.clock, max_sessions=3, max_per_sandbox=2)
        a, b, c = ("p", "a"), ("p", "b"), ("q", "c")
        limited.session_open(a)
        limited.session_open(a)
        e = self.assertRaises(Unavailable, limited.session_open, a)
        self.assertIn("maximum of 2 shell sessions", str(e))
        self.assertIn("p/a", str(e))
        limited.session_open(b)
        e = self.assertRaises(Unavailable, limited.session_open, c)
        self.assertIn("maximum of 3 shell sessions", str(e))
        self.assertEqual((limited.sessions(), limited.sessions(a), limited.sessions(b)), (3, 2, 1))
        limited.session_close(a)
        limited.session_open(c)
        limited.session_close(b)
        limited.session_close(b)  # one too many closes never goes negative
        self.assertEqual((limited.sessions(), limited.sessions(b)), (2, 0))


# ---------------------------------------------------------------------------------------------------
# Telnet codec
# ---------------------------------------------------------------------------------------------------


def naws(columns: int, rows: int) -> bytes:
    body = struct.pack(">HH", columns, rows).replace(b"\xff", b"\xff\xff")
    return bytes([IAC, SB, NAWS]) + body + bytes([IAC, SE])


def ttype_is(name: bytes) -> bytes:
    return bytes([IAC, SB, TTYPE, 0]) + name + bytes([IAC, SE])


class TelnetCodecTests(unittest.TestCase):
    def setUp(self) -> None:
        self.codec = TelnetCodec()

    def feed_bytewise(self, data: bytes):
        out, events = b"", []
        for i in range(len(data)):
            o, e = self.codec.feed(data[i:i + 1])
            out += o
            events += e
        return out, events

    def test_plain_data_passes_through(self):
        self.assertEqual(self.codec.feed(b"ls -l\x1b[A\x03"), (b"ls -l\x1b[A\x03", []))

    def test_iac_iac_is_a_literal_ff(self):
        self.assertEqual(self.codec.feed(b"a\xff\xffb"), (b"a\xffb", []))
        self.assertEqual(self.feed_bytewise(b"\xff\xff\xff\xff"), (b"\xff\xff", []))

    def test_naws_gives_a_window_size(self):
        self.assertEqual(self.codec.feed(naws(100, 30)), (b"", [WindowSize(100, 30)]))

    def test_naws_with_an_escaped_255(self):
        self.assertEqual(self.codec.feed(naws(255, 511)), (b"", [WindowSize(255, 511)]))

    def test_naws_split_across_feeds(self):
        data = b"x" + naws(132, 43) + b"y"
        self.assertEqual(self.feed_bytewise(data), (b"xy", [WindowSize(132, 43)]))

    def test_nonsense_window_sizes_are_ignored(self):
        for bad in [naws(0, 24), naws(80, 0), naws(20000, 24),
                    bytes([IAC, SB, NAWS, 0, 80, IAC, SE])]:
            self.assertEqual(self.codec.feed(bad), (b"", []), bad)

    def test_ttype_is_gives_the_terminal_type_lowercased(self):
        self.assertEqual(self.codec.feed(ttype_is(b"VT220")), (b"", [TerminalType("vt220")]))
        self.assertEqual(self.feed_bytewise(ttype_is(b"xterm-256color")), (b"", [TerminalType("xterm-256color")]))

    def test_unsafe_terminal_types_are_ignored(self):
        for bad in [b"", b"vt100;rm -rf /", b"a b", b"x" * 65, b"\x00", b"../x/y"]:
            self.assertEqual(self.codec.feed(ttype_is(bad)), (b"", []), bad)
        self.assertEqual(self.codec.feed(bytes([IAC, SB, TTYPE, 1, IAC, SE])), (b"", []))  # SEND, not IS

    def test_will_ttype_is_answered_with_a_send_request(self):
        out, events = self.codec.feed(bytes([IAC, WILL, TTYPE]))
        self.assertEqual((out, events), (b"", [OptionAnswer(WILL, TTYPE)]))
        self.assertEqual(bytes(self.codec.replies), ASK_TTYPE)

    def test_answers_to_our_greeting_are_events_without_replies(self):
        answers = bytes([IAC, WILL, NAWS, IAC, DO, ECHO, IAC, DO, SGA, IAC, WILL, SGA, IAC, WONT, TTYPE])
        out, events = self.codec.feed(answers)
        self.assertEqual(out, b"")
        self.assertEqual(events, [OptionAnswer(WILL, NAWS), OptionAnswer(DO, ECHO), OptionAnswer(DO, SGA),
                                  OptionAnswer(WILL, SGA), OptionAnswer(WONT, TTYPE)])
        self.assertEqual(bytes(self.codec.replies), b"")

    def test_unknown_options_are_refused(self):
        out, _ = self.codec.feed(bytes([IAC, WILL, 5, IAC, DO, 99, IAC, DO, TTYPE, IAC, WILL, ECHO]))
        self.assertEqual(out, b"")
        self.assertEqual(bytes(self.codec.replies),
                         bytes([IAC, DONT, 5, IAC, WONT, 99, IAC, WONT, TTYPE, IAC, DONT, ECHO]))

    def test_refusals_are_not_answered(self):
        self.codec.feed(bytes([IAC, WONT, 5, IAC, DONT, 99]))
        self.assertEqual(bytes(self.codec.replies), b"")

    def test_cr_lf_and_cr_nul_are_one_return(self):
        self.assertEqual(self.codec.feed(b"ls\r\n"), (b"ls\r", []))
        self.assertEqual(self.codec.feed(b"pwd\r\x00"), (b"pwd\r", []))
        self.assertEqual(self.feed_bytewise(b"a\r\nb\r\x00c"), (b"a\rb\rc", []))
        self.assertEqual(self.codec.feed(b"\r"), (b"\r", []))
        self.assertEqual(self.codec.feed(b"\n"), (b"", []))  # the LF of a CR LF split across feeds

    def test_a_lone_lf_or_cr_before_other_bytes_is_kept(self):
        self.assertEqual(self.codec.feed(b"a\nb\rc\r\rd"), (b"a\nb\rc\r\rd", []))

    def test_commands_in_the_data_stream_do_not_leak(self):
        self.assertEqual(self.codec.feed(bytes([ord("a"), IAC, 241, ord("b"), IAC, 246, ord("c")])),
                         (b"abc", []))

    def test_oversized_subnegotiation_is_bounded_and_dropped(self):
        stream = bytes([IAC, SB, TTYPE, 0]) + b"a" * 100_000 + bytes([IAC, SE]) + b"ok"
        out, events = self.codec.feed(stream)
        self.assertEqual((out, events), (b"ok", []))
        # What the parser keeps of it: the first 256 bytes, whatever was sent.
        self.assertEqual(telnet.TelnetParser().feed(stream), (b"ok", [bytes([TTYPE, 0]) + b"a" * 254]))

    def test_the_parser_reports_commands_in_order_split_anywhere(self):
        stream = (b"a" + bytes([IAC, WILL, NAWS]) + b"b" + bytes([IAC, SB, NAWS, 0, 80, 0, IAC, IAC, IAC, SE])
                  + bytes([IAC, IAC, IAC, 241, IAC, DONT, ECHO]) + b"c")
        expected = (b"ab\xffc", [(WILL, NAWS), bytes([NAWS, 0, 80, 0, 255]), (DONT, ECHO)])
        self.assertEqual(telnet.TelnetParser().feed(stream), expected)
        parser, text, commands = telnet.TelnetParser(), b"", []
        for byte in stream:  # one byte per read
            more, found = parser.feed(bytes([byte]))
            text, commands = text + more, commands + found
        self.assertEqual((text, commands), expected)
        self.assertTrue(parser.seen_command)
        plain = telnet.TelnetParser()
        self.assertEqual(plain.feed(b"plain\r\n"), (b"plain\r\n", []))
        self.assertFalse(plain.seen_command)

    def test_line_end_skips_telnet_commands(self):
        self.assertEqual(telnet.line_end(b"token\r\nmore\n"), 6)
        self.assertEqual(telnet.line_end(b"no end yet"), -1)
        sb = naws(80, 10)  # ... 0 10 ...: a 0x0A inside a subnegotiation
        self.assertIn(b"\n", sb)
        self.assertEqual(telnet.line_end(sb + b"tok\r\n"), len(sb) + 4)
        self.assertEqual(telnet.line_end(bytes([IAC, WILL, 10]) + b"x\n"), 4)  # option 10
        self.assertEqual(telnet.line_end(b"a\xff\xff\n"), 3)
        self.assertEqual(telnet.line_end(bytes([IAC, SB, NAWS, 0, 10])), -1)  # unfinished
        self.assertEqual(telnet.line_end(b"\xff"), -1)
        self.assertEqual(telnet.line_end(bytes([IAC, WILL])), -1)

    def test_escape_doubles_ff(self):
        self.assertEqual(telnet.escape(b"\xffa\xff\xff"), b"\xff\xffa\xff\xff\xff\xff")
        self.assertEqual(telnet.escape(b"plain"), b"plain")

    def test_greeting_asks_for_naws_ttype_and_offers_echo_and_sga(self):
        self.assertEqual(GREETING, bytes([IAC, DO, NAWS, IAC, DO, TTYPE, IAC, WILL, ECHO, IAC, WILL, SGA,
                                          IAC, DO, SGA]))


# ---------------------------------------------------------------------------------------------------
# The connection protocol
# ---------------------------------------------------------------------------------------------------


class FakeTerminal:
    """What ShellProtocol uses of bolt.host.terminal.Terminal."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.sizes: list[tuple[int, int]] = []
        self.hangups = 0
        self.started = False
        self.producer = None
        self.streaming = None
        self.on_output = lambda data: None
        self.on_close = lambda: None
        self.bytes_out = 0
        self.paused = 0
        self.resumed = 0
        self.stopped = 0

    def write(self, data: bytes) -> None:
        self.written.append(data)

    @property
    def input(self) -> bytes:
        return b"".join(self.written)

    def resize(self, rows: int, columns: int) -> None:
        self.sizes.append((rows, columns))

    def hangup(self) -> None:
        self.hangups += 1

    def start(self) -> None:
        self.started = True

    def registerProducer(self, producer, streaming) -> None:
        self.producer, self.streaming = producer, streaming

    def emit(self, data: bytes) -> None:
        """The programs printed ``data``."""
        self.bytes_out += len(data)
        self.on_output(data)

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        self.stopped += 1


class FakeGate:
    """Accepts the token "good" once per ticket; ``open`` answers with a Deferred the test fires."""

    def __init__(self) -> None:
        self.redeemed: list[tuple[int, str, str]] = []
        self.opens: list[tuple] = []
        self.pending: list[defer.Deferred] = []
        self.closes: list[tuple] = []
        self.used = False

    def redeem(self, port, token, client):
        self.redeemed.append((port, token, client))
        if token != "good" or self.used:
            raise ShellRefused("error: invalid, expired or already used token")
        self.used = True
        return "the-ticket"

    def open(self, ticket, term, rows, columns, client):
        self.opens.append((ticket, term, rows, columns, client))
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def closed(self, ticket, client, bytes_in, bytes_out):
        self.closes.append((ticket, client, bytes_in, bytes_out))


class NoDelayTransport(StringTransport):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nodelay = None

    def setTcpNoDelay(self, enabled) -> None:
        self.nodelay = enabled


CLIENT = IPv4Address("TCP", "10.1.2.3", 40000)


class ProtocolTestCase(unittest.TestCase):
    port = 30005

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.gate = FakeGate()
        self.terminal = FakeTerminal()
        self.proto, self.transport = self.connect()

    def connect(self, gate=None):
        factory = ShellFactory(gate or self.gate, self.port, self.clock)
        proto = factory.buildProtocol(CLIENT)
        transport = NoDelayTransport(peerAddress=CLIENT)
        proto.makeConnection(transport)
        return proto, transport

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def attach(self, index: int = -1) -> FakeTerminal:
        self.gate.pending[index].callback(self.terminal)
        return self.terminal

    def sent(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def telnet_session(self, columns=100, rows=30, ttype=b"VT220"):
        self.send(b"good\r\n")
        self.assertEqual(self.sent(), GREETING)
        self.send(bytes([IAC, WILL, NAWS]) + naws(columns, rows) + bytes([IAC, WILL, TTYPE]))
        self.assertEqual(self.sent(), ASK_TTYPE)
        self.send(bytes([IAC, DO, ECHO, IAC, DO, SGA, IAC, WILL, SGA]) + ttype_is(ttype))
        self.assertEqual(len(self.gate.opens), 1)
        return self.attach()


class RawProtocolTests(ProtocolTestCase):
    def test_tcp_nodelay_is_on(self):
        self.assertIs(self.transport.nodelay, True)

    def test_raw_handshake_opens_a_default_terminal_at_once(self):
        self.send(b"good\n")
        self.assertEqual(self.gate.redeemed, [(self.port, "good", "10.1.2.3")])
        self.assertEqual(self.gate.opens, [("the-ticket", "xterm", 24, 80, "10.1.2.3")])
        self.assertEqual(self.transport.value(), b"")  # no telnet negotiation for a raw client
        terminal = self.attach()
        self.assertTrue(terminal.started)
        self.assertIs(self.transport.producer, terminal)
        self.assertTrue(self.transport.streaming)
        self.assertIs(terminal.producer, self.transport)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no handshake timer left

    def test_token_split_across_packets_and_surrounding_spaces(self):
        for piece in [b" go", b"o", b"d \n"]:
            self.send(piece)
        self.assertEqual(len(self.gate.opens), 1)

    def test_raw_bytes_pass_unchanged_both_ways(self):
        self.send(b"good\n")
        terminal = self.attach()
        self.send(b"echo \xff\xfe\r\n\x03")
        self.assertEqual(terminal.input, b"echo \xff\xfe\r\n\x03")
        terminal.emit(b"out \xff\xff\x00 \r\n")
        self.assertEqual(self.transport.value(), b"out \xff\xff\x00 \r\n")

    def test_input_after_the_token_waits_for_the_terminal(self):
        self.send(b"good\nhostname\n")
        self.send(b"tty\n")
        self.assertEqual(self.terminal.written, [])
        terminal = self.attach()
        self.assertEqual(terminal.input, b"hostname\ntty\n")
        self.send(b"exit\n")
        self.assertEqual(terminal.input, b"hostname\ntty\nexit\n")

    def test_input_buffered_while_opening_is_bounded(self):
        self.send(b"good\n")
        for _ in range(40):
            self.send(b"y" * 10_000)
        terminal = self.attach()
        self.assertEqual(len(terminal.input), 65536)

    def test_wrong_token_gets_one_line_and_the_connection_closes(self):
        self.send(b"bad-token\n")
        self.assertEqual(self.transport.value(), b"error: invalid, expired or already used token\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.gate.opens, [])
        self.send(b"good\nls\n")  # anything after the refusal is ignored
        self.assertEqual(self.transport.value().count(b"\n"), 1)
        self.assertEqual(self.gate.opens, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_wrong_token_in_crlf_mode_gets_no_negotiation(self):
        self.send(b"bad\r\n")
        self.assertEqual(self.transport.value(), b"error: invalid, expired or already used token\r\n")

    def test_an_endless_token_line_is_refused(self):
        self.send(b"a" * (shellproto.MAX_TOKEN_LINE + 1))
        self.assertEqual(self.transport.value(), b"error: token line too long\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.gate.redeemed, [])

    def test_handshake_timeout(self):
        self.send(b"goo")
        self.clock.advance(shellproto.HANDSHAKE_TIMEOUT - 0.1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertEqual(self.transport.value(), b"error: no token received in time\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.gate.redeemed, [])

    def test_no_timeout_once_the_token_is_accepted(self):
        self.send(b"good\n")
        self.attach()
        self.clock.advance(shellproto.HANDSHAKE_TIMEOUT * 10)
        self.assertFalse(self.transport.disconnecting)

    def test_losing_the_connection_hangs_the_terminal_up_and_reports_once(self):
        self.send(b"good\nls\n")
        terminal = self.attach()
        terminal.emit(b"12345")
        self.proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(terminal.hangups, 1)
        self.assertEqual(self.gate.closes, [("the-ticket", "10.1.2.3", 3, 5)])  # bytes after the token
        terminal.on_close()  # the terminal going away afterwards changes nothing
        self.assertEqual(len(self.gate.closes), 1)
        self.assertEqual(terminal.hangups, 1)

    def test_losing_the_connection_while_the_terminal_opens(self):
        self.send(b"good\n")
        self.proto.connectionLost(Failure(error.ConnectionLost()))
        self.assertEqual(self.gate.closes, [])
        terminal = self.attach()  # it arrives late: hung up at once, the session reported ended
        self.assertEqual(terminal.hangups, 1)
        self.assertFalse(terminal.started)
        self.assertEqual(len(self.gate.closes), 1)

    def test_losing_the_connection_before_a_token(self):
        self.send(b"go")
        self.proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((self.gate.redeemed, self.gate.closes), ([], []))

    def test_the_shell_exiting_closes_the_connection(self):
        self.send(b"good\n")
        terminal = self.attach()
        terminal.emit(b"logout\r\n")
        terminal.on_close()
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.transport.producer)
        self.assertEqual(self.transport.value(), b"logout\r\n")
        self.proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.gate.closes, [("the-ticket", "10.1.2.3", 0, 8)])

    def test_a_refused_open_sends_its_line(self):
        self.send(b"good\n")
        self.gate.pending[0].errback(ShellRefused("error: sandbox p/s has its maximum of 1 shell sessions"))
        self.assertEqual(self.transport.value(), b"error: sandbox p/s has its maximum of 1 shell sessions\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.gate.closes, [])

    def test_an_unexpected_failure_to_open_sends_a_generic_line(self):
        self.send(b"good\n")
        self.gate.pending[0].errback(RuntimeError("/dev/ptmx: secret host detail"))
        self.assertEqual(self.transport.value(), b"error: the shell could not be started\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_two_connections_racing_one_token_only_one_gets_a_shell(self):
        clock = task.Clock()
        book = ShellTickets(clock, PORTS, 60)
        listen = Listener()
        token, ticket = book.issue("p", "s", listen)
        manager = FakeManager(book)
        gateway = ShellGateway(manager, clock, "127.0.0.1")
        connections = []
        for n in range(2):
            proto = ShellFactory(gateway, ticket.port, clock).buildProtocol(CLIENT)
            transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000 + n))
            proto.makeConnection(transport)
            connections.append((proto, transport))
        for proto, _ in connections:
            proto.dataReceived(token.encode() + b"\n")
        self.assertEqual(len(manager.attached), 1)
        self.assertEqual(connections[0][1].value(), b"")
        self.assertEqual(connections[1][1].value(), b"error: invalid, expired or already used token\r\n")
        self.assertEqual(listen.closed, [ticket.port])


class TelnetProtocolTests(ProtocolTestCase):
    def test_crlf_token_starts_negotiation_and_waits_for_naws_and_ttype(self):
        self.send(b"good\r\n")
        self.assertEqual(self.transport.value(), GREETING)
        self.assertEqual(self.gate.opens, [])
        self.send(bytes([IAC, WILL, NAWS]) + naws(100, 30))
        self.assertEqual(self.gate.opens, [])
        self.send(bytes([IAC, WILL, TTYPE]))
        self.assertTrue(self.transport.value().endswith(ASK_TTYPE))
        self.assertEqual(self.gate.opens, [])
        self.send(ttype_is(b"VT220"))
        self.assertEqual(self.gate.opens, [("the-ticket", "vt220", 30, 100, "10.1.2.3")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_client_that_never_answers_gets_a_shell_after_the_wait(self):
        self.send(b"good\r\n")
        self.clock.advance(shellproto.NEGOTIATION_WAIT - 0.01)
        self.assertEqual(self.gate.opens, [])
        self.clock.advance(0.01)
        self.assertEqual(self.gate.opens, [("the-ticket", "xterm", 24, 80, "10.1.2.3")])

    def test_a_client_refusing_ttype_gets_the_default_term_at_once(self):
        self.send(b"good\r\n")
        self.send(bytes([IAC, WILL, NAWS]) + naws(90, 20) + bytes([IAC, WONT, TTYPE]))
        self.assertEqual(self.gate.opens, [("the-ticket", "xterm", 20, 90, "10.1.2.3")])

    def test_partial_answers_open_after_the_wait_with_what_was_learnt(self):
        self.send(b"good\r\n" + bytes([IAC, WILL, NAWS]) + naws(132, 43))
        self.assertEqual(self.gate.opens, [])
        self.clock.advance(shellproto.NEGOTIATION_WAIT)
        self.assertEqual(self.gate.opens, [("the-ticket", "xterm", 43, 132, "10.1.2.3")])

    def test_negotiation_before_the_token_means_telnet(self):
        self.send(bytes([IAC, WILL, NAWS]) + b"good\n")
        self.assertEqual(self.gate.redeemed[0][1], "good")
        self.assertTrue(self.transport.value().startswith(GREETING))

    def test_negotiation_before_the_token_is_not_lost(self):
        # A client that negotiates first (PuTTY does): a 10-row window puts a 0x0A byte inside the
        # subnegotiation, which is not the end of the token line; and what it said counts.
        self.send(bytes([IAC, WILL, NAWS]) + naws(80, 10) + bytes([IAC, WILL, TTYPE, IAC, WILL, 5]))
        self.send(b"good\r\n")
        self.assertEqual(self.gate.redeemed, [(self.port, "good", "10.1.2.3")])
        sent = self.sent()
        self.assertTrue(sent.startswith(GREETING), sent)
        self.assertIn(ASK_TTYPE, sent)
        self.assertIn(bytes([IAC, DONT, 5]), sent)
        self.send(ttype_is(b"xterm-256color"))
        self.assertEqual(self.gate.opens, [("the-ticket", "xterm-256color", 10, 80, "10.1.2.3")])

    def test_naws_while_running_resizes_the_terminal(self):
        terminal = self.telnet_session()
        self.send(naws(120, 40))
        self.assertEqual(terminal.sizes, [(40, 120)])
        self.send(b"x" + naws(80, 24)[:4])
        self.send(naws(80, 24)[4:] + b"y")
        self.assertEqual(terminal.sizes, [(40, 120), (24, 80)])
        self.assertEqual(terminal.input, b"xy")

    def test_output_is_escaped_for_telnet(self):
        terminal = self.telnet_session()
        self.transport.clear()
        terminal.emit(b"a\xffb\xff")
        self.assertEqual(self.transport.value(), b"a\xff\xffb\xff\xff")

    def test_input_is_decoded_from_telnet(self):
        terminal = self.telnet_session()
        self.send(b"echo \xff\xff\r\n")
        self.send(b"ls\r\x00")
        self.send(bytes([IAC, WILL, 37]))
        self.assertEqual(terminal.input, b"echo \xff\rls\r")
        self.assertEqual(self.transport.value(), bytes([IAC, DONT, 37]))

    def test_keystrokes_typed_during_negotiation_reach_the_shell(self):
        self.send(b"good\r\n")
        self.send(b"id\r\n")
        self.clock.advance(shellproto.NEGOTIATION_WAIT)
        terminal = self.attach()
        self.assertEqual(terminal.input, b"id\r")

    def test_connection_lost_during_negotiation(self):
        self.send(b"good\r\n")
        self.proto.connectionLost(Failure(error.ConnectionDone()))
        self.clock.advance(shellproto.NEGOTIATION_WAIT)
        self.assertEqual(self.gate.opens, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bytes_in_counts_what_came_after_the_token(self):
        terminal = self.telnet_session()
        before = self.proto.bytes_in
        self.send(b"exit\r\n")
        self.proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.gate.closes, [("the-ticket", "10.1.2.3", before + 6, terminal.bytes_out)])


# ---------------------------------------------------------------------------------------------------
# The gateway: throttling, error lines, listeners
# ---------------------------------------------------------------------------------------------------


class FakeManager:
    """The manager's shell methods over real ShellTickets; attach answers with a FakeTerminal."""

    def __init__(self, book: ShellTickets, fail=None) -> None:
        self.shells = book
        self.attached: list[tuple] = []
        self.closed: list[tuple] = []
        self.fail = fail

    def redeem_shell(self, port, token):
        return self.shells.redeem(port, token)

    def attach_shell(self, ticket, term, rows, columns, client):
        if self.fail is not None:
            raise self.fail
        self.attached.append((ticket, term, rows, columns, client))
        return defer.succeed(FakeTerminal())

    def shell_closed(self, ticket, client, bytes_in, bytes_out):
        self.closed.append((ticket, client, bytes_in, bytes_out))


class GatewayTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.book = ShellTickets(self.clock, PORTS, 3600)
        self.listen = Listener()
        self.manager = FakeManager(self.book)
        self.gateway = ShellGateway(self.manager, self.clock, "127.0.0.1")

    def test_failed_attempts_are_throttled_per_address(self):
        token, ticket = self.book.issue("p", "s", self.listen)
        for _ in range(10):
            e = self.assertRaises(ShellRefused, self.gateway.redeem, ticket.port, "wrong", "10.0.0.1")
            self.assertEqual(str(e), "error: invalid, expired or already used token")
        e = self.assertRaises(ShellRefused, self.gateway.redeem, ticket.port, token, "10.0.0.1")
        self.assertIn("too many failed attempts", str(e))
        self.assertFalse(ticket.ended)  # a throttled client does not even get to try the token
        self.assertIs(self.gateway.redeem(ticket.port, token, "10.0.0.2"), ticket)  # others unaffected

    def test_the_throttle_lifts_after_a_while(self):
        token, ticket = self.book.issue("p", "s", self.listen)
        for _ in range(10):
            self.assertRaises(ShellRefused, self.gateway.redeem, ticket.port, "wrong", "10.0.0.1")
        self.clock.advance(61)
        self.assertIs(self.gateway.redeem(ticket.port, token, "10.0.0.1"), ticket)

    def test_core_errors_become_error_lines(self):
        self.manager.fail = Unavailable("sandbox p/s has its maximum of 1 shell sessions")
        f = self.failureResultOf(self.gateway.open("t", "xterm", 24, 80, "c"), ShellRefused)
        self.assertEqual(str(f.value), "error: sandbox p/s has its maximum of 1 shell sessions")
        self.manager.fail = Conflict("sandbox p/s is not running; start it first")
        f = self.failureResultOf(self.gateway.open("t", "xterm", 24, 80, "c"), ShellRefused)
        self.assertEqual(str(f.value), "error: sandbox p/s is not running; start it first")

    def test_asynchronous_core_errors_become_error_lines(self):
        self.manager.attach_shell = lambda *a: defer.fail(Conflict("sandbox p/s is not running"))
        f = self.failureResultOf(self.gateway.open("t", "xterm", 24, 80, "c"), ShellRefused)
        self.assertEqual(str(f.value), "error: sandbox p/s is not running")

    def test_listeners_bind_to_the_configured_host(self):
        reactor = MemoryReactorClock()
        gateway = ShellGateway(self.manager, reactor, "127.0.0.7")
        close = gateway.listen(30003, object())
        port, factory, _, interface = reactor.tcpServers[0]
        self.assertEqual((port, interface), (30003, "127.0.0.7"))
        self.assertIsInstance(factory, ShellFactory)
        self.assertEqual(factory.port, 30003)
        self.assertTrue(callable(close))
        self.assertEqual(reactor.sslServers, [])

    def test_tls_listeners_use_the_given_context(self):
        reactor = MemoryReactorClock()
        context = object()
        gateway = ShellGateway(self.manager, reactor, "127.0.0.1", tls_context=context)
        gateway.listen(30004, object())
        port, factory, ctx, _, interface = reactor.sslServers[0]
        self.assertEqual((port, ctx, interface), (30004, context, "127.0.0.1"))
        self.assertEqual(reactor.tcpServers, [])

    def test_end_to_end_over_string_transports(self):
        token, ticket = self.book.issue("p", "s", self.listen)
        proto = ShellFactory(self.gateway, ticket.port, self.clock).buildProtocol(CLIENT)
        transport = StringTransport(peerAddress=CLIENT)
        proto.makeConnection(transport)
        proto.dataReceived(token.encode() + b"\r\n")
        proto.dataReceived(bytes([IAC, WILL, NAWS]) + naws(100, 30) + bytes([IAC, WONT, TTYPE]))
        self.assertEqual(self.manager.attached, [(ticket, "xterm", 30, 100, "10.1.2.3")])
        proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(len(self.manager.closed), 1)
        self.assertEqual(self.manager.closed[0][:2], (ticket, "10.1.2.3"))


# ---------------------------------------------------------------------------------------------------
# Terminal: the reactor's view of a PTY master, over a real os.openpty() pair
# ---------------------------------------------------------------------------------------------------


class FakeHelper:
    def __init__(self) -> None:
        self.signals: list[str] = []

    def signal(self, name: str) -> None:
        self.signals.append(name)


class TerminalTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.master, self.slave = os.openpty()
        self.addCleanup(self._close, self.slave)
        self.helper = FakeHelper()
        self.terminal = Terminal(self.master, self.helper, self.reactor)
        self.addCleanup(self._close_terminal)
        self.output: list[bytes] = []
        self.closed: list[bool] = []
        self.terminal.on_output = self.output.append
        self.terminal.on_close = lambda: self.closed.append(True)

    @staticmethod
    def _close(fd: int) -> None:
        try:
            os.close(fd)
        except OSError:
            pass

    def _close_terminal(self) -> None:
        if self.terminal.fd >= 0:
            self._close(self.terminal.fd)

    def pump(self, rounds: int = 5) -> None:
        """Do what the reactor would with the terminal's descriptor, a few times over."""
        for _ in range(rounds):
            for ready, act in [(self.reactor.getWriters, self.terminal.doWrite),
                               (self.reactor.getReaders, self.terminal.doRead)]:
                if self.terminal in ready():
                    why = act()
                    if why is not None:
                        self.terminal.connectionLost(Failure(why))

    def slave_size(self) -> tuple[int, int]:
        rows, columns, _, _ = struct.unpack("HHHH", fcntl.ioctl(self.slave, termios.TIOCGWINSZ, b"\0" * 8))
        return rows, columns

    def test_resize_sets_the_window_size_of_the_pty(self):
        self.terminal.resize(30, 100)
        self.assertEqual(self.slave_size(), (30, 100))
        self.terminal.resize(40, 120)
        self.assertEqual(self.slave_size(), (40, 120))
        self.assertEqual(self.terminal.window_size(), (40, 120))

    def test_start_reads_and_output_is_counted(self):
        self.terminal.start()
        self.assertIn(self.terminal, self.reactor.getReaders())
        os.write(self.slave, b"hello\n")
        self.assertIsNone(self.terminal.doRead())
        self.assertEqual(b"".join(self.output), b"hello\r\n")  # the PTY's onlcr at work
        self.assertEqual(self.terminal.bytes_out, 7)
        self.assertIsNone(self.terminal.doRead())  # nothing to read: EAGAIN is not an end

    def test_bulk_output_is_passed_on_in_large_pieces(self):
        self.terminal.start()
        os.set_blocking(self.slave, False)
        written = 0
        try:
            while written < 20000:  # up to five line-discipline buffers' worth, as much as the PTY takes
                written += os.write(self.slave, b"x" * (20000 - written))
        except BlockingIOError:
            pass
        self.assertGreater(written, 4096)
        self.assertIsNone(self.terminal.doRead())
        self.assertEqual(len(self.output), 1, "one read of the reactor passes on what is there")
        self.assertGreater(len(self.output[0]), 4096)
        self.assertEqual(self.terminal.bytes_out, len(self.output[0]))

    def test_pausing_stops_reading_the_pty(self):
        self.terminal.start()
        self.terminal.pauseProducing()
        self.assertNotIn(self.terminal, self.reactor.getReaders())
        self.terminal.resumeProducing()
        self.assertIn(self.terminal, self.reactor.getReaders())

    def test_input_reaches_the_slave(self):
        attrs = termios.tcgetattr(self.slave)
        attrs[3] &= ~(termios.ICANON | termios.ECHO)
        termios.tcsetattr(self.slave, termios.TCSANOW, attrs)
        self.terminal.write(b"abc")
        self.terminal.doWrite()
        self.assertEqual(os.read(self.slave, 100), b"abc")

    def test_the_last_slave_closing_ends_the_terminal(self):
        self.terminal.start()
        os.write(self.slave, b"bye\n")
        os.close(self.slave)
        self.assertIsNone(self.terminal.doRead())
        reason = self.terminal.doRead()
        self.assertIsInstance(reason, error.ConnectionDone)
        self.terminal.connectionLost(Failure(reason))
        self.assertEqual(b"".join(self.output), b"bye\r\n")
        self.assertEqual(self.closed, [True])
        self.assertEqual(self.terminal.fd, -1)

    def test_hangup_closes_the_master_and_signals_the_helper(self):
        self.terminal.start()
        self.terminal.hangup()
        self.assertIn("HUP", self.helper.signals)
        self.pump()
        self.assertEqual(self.terminal.fd, -1)
        self.assertEqual(self.closed, [True])
        self.assertNotIn(self.terminal, self.reactor.getReaders())
        self.assertNotIn(self.terminal, self.reactor.getWriters())

    def test_hangup_does_not_wait_for_input_the_pty_will_not_take(self):
        # The shell is busy and not reading: the PTY's input queue is full and input waits in our
        # buffer.  A hangup must still close the master at once (SIGHUP for the session) rather
        # than wait, forever, for that input to drain.
        self.terminal.start()
        self.terminal.write(b"x" * 200_000)
        self.pump()
        self.assertIn(self.terminal, self.reactor.getWriters())  # input still waiting for the PTY
        self.terminal.hangup()
        self.pump()
        self.assertEqual(self.terminal.fd, -1)
        self.assertEqual(self.closed, [True])

    def test_hangup_while_the_socket_is_paused(self):
        # A full PTY paused the socket (we are its producer's consumer): a hangup still ends it all.
        socket_side = FakeTerminal()  # anything with the IPushProducer methods
        self.terminal.registerProducer(socket_side, True)
        self.terminal.start()
        self.terminal.write(b"x" * 200_000)  # more than the write buffer takes: pauses the socket
        self.assertGreaterEqual(socket_side.paused, 1)
        self.terminal.hangup()
        self.pump()
        self.assertEqual(self.terminal.fd, -1)
        self.assertEqual(self.closed, [True])

    def test_hangup_twice_is_harmless(self):
        self.terminal.hangup()
        self.terminal.hangup()
        self.pump()
        self.assertEqual(self.closed, [True])
        self.assertEqual(self.terminal.fd, -1)


# ---------------------------------------------------------------------------------------------------
# The manager's shell methods and the route
# ---------------------------------------------------------------------------------------------------


class FakeOpenTerminal:
    """Stands in for Runtime.open_terminal; records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.results: list = []

    def __call__(self, pid, command, **kwargs):
        self.calls.append((pid, command, kwargs))
        if self.results:
            outcome = self.results.pop(0)
            return defer.fail(outcome) if isinstance(outcome, Exception) else defer.succeed(outcome)
        return defer.succeed(FakeTerminal())


class ManagerShellTests(unittest.TestCase):
    def setUp(self) -> None:
        self.world = World(self)
        self.manager = self.world.manager
        self.listen = Listener()
        self.manager.shells = ShellTickets(self.world.clock, PORTS, 120, max_sessions=3, max_per_sandbox=2)
        self.manager.shell_listen = self.listen
        self.open_terminal = FakeOpenTerminal()
        self.world.host.runtime.open_terminal = self.open_terminal
        self.successResultOf(self.manager.create_project("proj"))
        self.successResultOf(self.manager.create_sandbox("proj", "box"))
        self.successResultOf(self.manager.create_sandbox("proj", "other"))

    def issue(self, sandbox="box"):
        info = self.manager.open_shell("proj", sandbox)
        return info, self.manager.redeem_shell(info["port"], info["token"])

    def test_open_shell_answers_port_token_and_expiry(self):
        info = self.manager.open_shell("proj", "box")
        self.assertEqual(set(info), {"port", "token", "expires_at", "expires_in"})
        self.assertIn(info["port"], PORTS)
        self.assertEqual(list(self.listen.open), [info["port"]])
        self.assertEqual(info["expires_in"], 120)
        self.assertEqual(info["expires_at"], "2026-05-28T20:28:40+00:00")  # the World's clock + 120 s

    def test_open_shell_on_a_stopped_sandbox_is_a_conflict(self):
        self.successResultOf(self.manager.stop_sandbox("proj", "box"))
        self.assertRaises(Conflict, self.manager.open_shell, "proj", "box")
        self.assertEqual(self.listen.opened, [])

    def test_open_shell_on_a_missing_sandbox(self):
        self.assertRaises(NotFound, self.manager.open_shell, "proj", "nope")
        self.assertRaises(NotFound, self.manager.open_shell, "nope", "box")

    def test_open_shell_without_the_shell_service(self):
        self.manager.shell_listen = None
        self.assertRaises(Unavailable, self.manager.open_shell, "proj", "box")

    def test_stopping_a_sandbox_revokes_its_tickets(self):
        mine = self.manager.open_shell("proj", "box")
        other = self.manager.open_shell("proj", "other")
        self.successResultOf(self.manager.stop_sandbox("proj", "box"))
        self.assertEqual(self.listen.closed, [mine["port"]])
        self.assertIsNone(self.manager.redeem_shell(mine["port"], mine["token"]))
        self.assertIsNotNone(self.manager.redeem_shell(other["port"], other["token"]))

    def test_deleting_a_sandbox_revokes_its_tickets(self):
        mine = self.manager.open_shell("proj", "box")
        self.successResultOf(self.manager.delete_sandbox("proj", "box"))
        self.assertEqual(self.listen.open, {})
        self.assertIsNone(self.manager.redeem_shell(mine["port"], mine["token"]))

    def test_deleting_a_project_revokes_every_ticket_of_it(self):
        self.manager.open_shell("proj", "box")
        self.manager.open_shell("proj", "other")
        self.successResultOf(self.manager.delete_project("proj", force=True))
        self.assertEqual(self.listen.open, {})
        self.assertEqual(self.manager.shells.pending(), [])

    def test_server_stop_closes_every_listener(self):
        self.manager.open_shell("proj", "box")
        self.successResultOf(self.manager.stop())
        self.assertEqual(self.listen.open, {})

    def test_attach_starts_a_login_shell_in_the_sandbox(self):
        _, ticket = self.issue()
        terminal = self.successResultOf(self.manager.attach_shell(ticket, "vt220", 30, 100, "127.0.0.1"))
        self.assertIsInstance(terminal, FakeTerminal)
        pid, command, kwargs = self.open_terminal.calls[0]
        _, sandbox = self.manager.get_sandbox("proj", "box")
        self.assertEqual(pid, sandbox.runtime["pid"])
        self.assertEqual(kwargs["start_time"], sandbox.runtime["start_time"])
        self.assertEqual(kwargs["cgroup_procs"], self.world.host.cgroups.procs_files("proj", "box"))
        self.assertEqual((kwargs["rows"], kwargs["columns"]), (30, 100))
        self.assertEqual(kwargs["env"]["TERM"], "vt220")
        self.assertEqual(kwargs["env"]["HOME"], "/root")
        self.assertIn("bash -l", " ".join(command))
        self.assertEqual(self.manager.shells.sessions(("proj", "box")), 1)
        self.manager.shell_closed(ticket, "127.0.0.1", 10, 20)
        self.assertEqual(self.manager.shells.sessions(), 0)

    def test_session_limits(self):
        for _ in range(2):
            _, ticket = self.issue()
            self.successResultOf(self.manager.attach_shell(ticket, "xterm", 24, 80, "c"))
        _, third = self.issue()
        e = self.assertRaises(Unavailable, self.manager.attach_shell, third, "xterm", 24, 80, "c")
        self.assertIn("maximum of 2 shell sessions", str(e))
        _, elsewhere = self.issue("other")
        self.successResultOf(self.manager.attach_shell(elsewhere, "xterm", 24, 80, "c"))
        _, fourth = self.issue("other")
        e = self.assertRaises(Unavailable, self.manager.attach_shell, fourth, "xterm", 24, 80, "c")
        self.assertIn("maximum of 3 shell sessions", str(e))
        self.assertEqual(self.manager.shells.sessions(), 3)

    def test_a_failed_attach_frees_its_session(self):
        from bolt.host.terminal import TerminalFailed
        _, ticket = self.issue()
        self.open_terminal.results.append(TerminalFailed("sandbox process 1 is not running", "gone"))
        self.failureResultOf(self.manager.attach_shell(ticket, "xterm", 24, 80, "c"), Conflict)
        self.assertEqual(self.manager.shells.sessions(), 0)
        _, ticket = self.issue()
        self.open_terminal.results.append(TerminalFailed("setns failed"))
        self.failureResultOf(self.manager.attach_shell(ticket, "xterm", 24, 80, "c"), TerminalFailed)
        self.assertEqual(self.manager.shells.sessions(), 0)

    def test_attach_after_the_sandbox_stopped_is_a_conflict(self):
        _, ticket = self.issue()
        self.successResultOf(self.manager.stop_sandbox("proj", "box"))
        self.assertRaises(Conflict, self.manager.attach_shell, ticket, "xterm", 24, 80, "c")
        self.assertEqual(self.manager.shells.sessions(), 0)


class ShellRouteTests(unittest.TestCase):
    def setUp(self) -> None:
        self.world = World(self)
        self.listen = Listener()
        self.world.manager.shells = ShellTickets(self.world.clock, frozenset({30001}), 300)
        self.world.manager.shell_listen = self.listen
        self.http = StubTreq(self.world.api.resource())
        self.successResultOf(self.world.manager.create_project("proj"))
        self.successResultOf(self.world.manager.create_sandbox("proj", "box"))

    @defer.inlineCallbacks
    def post(self, path="/api/projects/proj/sandboxes/box/shell"):
        response = yield self.http.post("https://bolt.test" + path, auth=("admin", PASSWORD))
        body = yield response.content()
        return response.code, json.loads(body)

    @defer.inlineCallbacks
    def test_shell_route(self):
        code, body = yield self.post()
        self.assertEqual(code, 200, body)
        self.assertEqual(set(body), {"port", "token", "expires_at", "expires_in"})
        self.assertEqual((body["port"], body["expires_in"]), (30001, 300))
        self.assertEqual(len(body["token"]), 43)
        # The range (one port) is exhausted while that ticket waits.
        code, body = yield self.post()
        self.assertEqual(code, 503)
        self.assertIn("shell_port_range", body["error"])
        code, body = yield self.post("/api/projects/proj/sandboxes/nope/shell")
        self.assertEqual(code, 404)

    @defer.inlineCallbacks
    def test_shell_into_a_stopped_sandbox_is_409(self):
        self.successResultOf(self.world.manager.stop_sandbox("proj", "box"))
        code, body = yield self.post()
        self.assertEqual(code, 409)
        self.assertIn("not running", body["error"])

    @defer.inlineCallbacks
    def test_shell_route_needs_credentials(self):
        response = yield self.http.post("https://bolt.test/api/projects/proj/sandboxes/box/shell")
        self.assertEqual(response.code, 401)
        self.assertEqual(self.listen.opened, [])
