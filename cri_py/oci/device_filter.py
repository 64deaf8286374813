"""The spec's `linux.resources.devices` as a cgroup v2 device program: eBPF bytecode of type
BPF_PROG_TYPE_CGROUP_DEVICE (cgroup v2 has no devices.allow file; the kernel asks an attached
program instead). Pure and stdlib only; loading and attaching are the syscall edge's.

The program reads the request from its context (`struct bpf_cgroup_dev_ctx`: `access_type`
= device type in the low 16 bits, access bits in the high 16; then `major`, `minor`) and
returns 1 (allow) or 0 (deny). Rules keep the v1 list's meaning: a later rule wins over an
earlier one, so they are tested last to first and the first match answers; no match denies.
An allow rule matches when every requested access is among its own; a deny rule when any is.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# <linux/bpf.h>
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
_ACCESS_BITS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
_ALL_ACCESS = BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE
_TYPES = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}

# Opcodes (class | operation | source), from the kernel's instruction set document.
LDX_MEM_W = 0x61  # dst = *(u32 *)(src + off)
ALU64_AND_K = 0x57  # dst &= imm
ALU64_RSH_K = 0x77  # dst >>= imm
ALU64_MOV_K = 0xB7  # dst = imm
ALU64_MOV_X = 0xBF  # dst = src
JMP_JNE_K = 0x55  # if dst != imm: pc += off
JMP_JEQ_K = 0x15  # if dst == imm: pc += off
JMP_EXIT = 0x95  # return r0

# Registers: r1 holds the context on entry; r0 is the answer.
R0, R1, R2, R3, R4, R5 = range(6)
TYPE, ACCESS, MAJOR, MINOR = R2, R3, R4, R5


@dataclass(frozen=True)
class Insn:
    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        # struct bpf_insn: u8 code; u8 dst_reg:4, src_reg:4 (little-endian bitfields); s16; s32.
        return struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, self.off, self.imm)


def _access_bits(access: str) -> int:
    if not access or set(access) - set("rwm"):
        raise ValueError(f"device rule access {access!r} is not some of 'rwm'")
    bits = 0
    for letter in access:
        bits |= _ACCESS_BITS[letter]
    return bits


def _rule_block(rule: Mapping[str, Any]) -> tuple[list[Insn], bool]:
    """The tests of one rule, each jumping past the block when it fails, then the answer;
    and whether the rule matches every request (no tests)."""
    kind = str(rule.get("type") or "a")
    if kind not in ("a", "b", "c"):
        raise ValueError(f"device rule type {kind!r} is not a, b or c")
    access = _access_bits(str(rule.get("access") or "rwm"))
    allow = bool(rule.get("allow"))
    # Each test is (instructions before its jump, the jump with off to be filled).
    tests: list[list[Insn]] = []
    if kind != "a":
        tests.append([Insn(JMP_JNE_K, TYPE, imm=_TYPES[kind])])
    if access != _ALL_ACCESS:
        if allow:  # some requested access is not granted by this rule: no match
            tests.append(
                [
                    Insn(ALU64_MOV_X, R0, ACCESS),
                    Insn(ALU64_AND_K, R0, imm=~access & _ALL_ACCESS),
                    Insn(JMP_JNE_K, R0, imm=0),
                ]
            )
        else:  # no requested access is denied by this rule: no match
            tests.append(
                [
                    Insn(ALU64_MOV_X, R0, ACCESS),
                    Insn(ALU64_AND_K, R0, imm=access),
                    Insn(JMP_JEQ_K, R0, imm=0),
                ]
            )
    for register, key in ((MAJOR, "major"), (MINOR, "minor")):
        value = rule.get(key)
        if kind != "a" and value is not None and int(value) >= 0:
            tests.append([Insn(JMP_JNE_K, register, imm=int(value))])
    answer = [Insn(ALU64_MOV_K, R0, imm=1 if allow else 0), Insn(JMP_EXIT)]
    block: list[Insn] = []
    remaining = sum(len(t) for t in tests) + len(answer)
    for test in tests:
        remaining -= len(test)
        # A jump's offset counts from the instruction after it: to the block's end.
        *before, jump = test
        block += [*before, Insn(jump.code, jump.dst, jump.src, remaining, jump.imm)]
    return block + answer, not tests


def device_program(rules: Sequence[Mapping[str, Any]]) -> list[Insn]:
    """The program for `rules` (the spec's list, in order)."""
    program = [
        Insn(LDX_MEM_W, TYPE, R1, 0),
        Insn(ALU64_AND_K, TYPE, imm=0xFFFF),
        Insn(LDX_MEM_W, ACCESS, R1, 0),
        Insn(ALU64_RSH_K, ACCESS, imm=16),
        Insn(LDX_MEM_W, MAJOR, R1, 4),
        Insn(LDX_MEM_W, MINOR, R1, 8),
    ]
    for rule in reversed(rules):
        block, matches_all = _rule_block(rule)
        program += block
        if matches_all:
            # Earlier rules can never answer (the verifier refuses unreachable code).
            return program
    return [*program, Insn(ALU64_MOV_K, R0, imm=0), Insn(JMP_EXIT)]


def encode(program: Sequence[Insn]) -> bytes:
    return b"".join(insn.encode() for insn in program)
