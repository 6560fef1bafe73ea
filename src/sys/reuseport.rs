//! `--balance round-robin`: the kernel hands each new connection of a
//! `--bind` to the worker slots in turn.
//!
//! Every slot has its own `SO_REUSEPORT` listening socket on the same
//! address (one reuseport group). Without help the kernel picks a socket of
//! the group by a hash of the connection's addresses, which spreads a few
//! long-lived connections no better than at random. So main attaches a tiny
//! eBPF program of type `SK_REUSEPORT` to the group
//! (`SO_ATTACH_REUSEPORT_EBPF`); for each new connection it takes the next
//! number of a counter and picks, through a `REUSEPORT_SOCKARRAY` map that
//! holds slot k's socket at index k, the slot at that position of the list
//! of slots in rotation. main keeps that list (the slots whose worker is
//! ready and not draining) in a second map, an array of `u32`:
//!
//! ```text
//! state[0]      the counter (the program adds 1 atomically)
//! state[1]      K, how many slots are in rotation
//! state[2 + i]  the i-th slot in rotation, i < K
//! state[2 + C + k]  connections handed to slot k so far
//! ```
//!
//! Both maps are sized for C slots, the most a group can grow to (a scale
//! above the count panzer started with adds a slot: its socket goes into
//! the array, [`Rotation::add`]); C entries of 4 and 8 bytes are a few
//! pages even for the count ceiling. A socket can be in one socket array
//! only, so growing in place is what keeps the program and its choice
//! unbroken.
//!
//! The last count lets main tell a worker that accepts nothing (what was
//! handed to its slot is all still in its queue) from a busy one.
//!
//! When the program cannot pick (K is 0, an entry is missing) it lets the
//! kernel choose by hash among the group's sockets, as without it.
//!
//! Where the kernel has it (5.14 and later), the program is loaded to pick
//! for migrations too (`BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`): when a slot's
//! socket stops listening, the connections waiting in its queue move to the
//! slots in rotation instead of being reset ([`Rotation::flush`]).
//!
//! The program is a few dozen eBPF instructions assembled here by hand and loaded
//! with the `bpf(2)` system call: no compiler toolchain at build time and
//! no crate (the ones that load programs, `aya` and `libbpf-rs`, either
//! expect an object file built by clang or bring a C library along).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `enum bpf_cmd`.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `enum bpf_map_type`.
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
/// `enum bpf_prog_type`, `enum bpf_attach_type`.
const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
const BPF_SK_REUSEPORT_SELECT: u32 = 39;
const BPF_SK_REUSEPORT_SELECT_OR_MIGRATE: u32 = 40;
/// `<asm-generic/socket.h>`.
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;
/// Helper functions: `bpf_map_lookup_elem`, `bpf_sk_select_reuseport`.
const HELPER_MAP_LOOKUP: i32 = 1;
const HELPER_SK_SELECT_REUSEPORT: i32 = 82;
/// The verifier's log, read when the program is refused.
const LOG_SIZE: usize = 16 * 1024;

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u8,
    /// dst_reg in the low 4 bits, src_reg in the high 4.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | (src << 4), off, imm }
}

// The opcodes used (`<linux/bpf.h>`, `<linux/bpf_common.h>`).
const MOV64_REG: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const ADD64_IMM: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
const ADD32_IMM: u8 = 0x04; // BPF_ALU | BPF_ADD | BPF_K
const MOD32_REG: u8 = 0x9c; // BPF_ALU | BPF_MOD | BPF_X
const ST_W_IMM: u8 = 0x62; // BPF_ST | BPF_MEM | BPF_W
const STX_W: u8 = 0x63; // BPF_STX | BPF_MEM | BPF_W
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ATOMIC_W: u8 = 0xc3; // BPF_STX | BPF_ATOMIC | BPF_W
const ATOMIC_FETCH_ADD: i32 = 0x01; // BPF_ADD | BPF_FETCH
const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW
const PSEUDO_MAP_FD: u8 = 1;
const JEQ_IMM: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JNE_IMM: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const ATOMIC_ADD: i32 = 0x00; // BPF_ADD
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const SK_PASS: i32 = 1;

/// The program being assembled, and the jumps to its end (`return
/// SK_PASS`) to patch once the end's place is known.
struct Asm {
    v: Vec<Insn>,
    exits: Vec<usize>,
    state: RawFd,
}

impl Asm {
    fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.v.push(insn(code, dst, src, off, imm));
    }

    /// `if reg <jump> imm: return SK_PASS` (the offset patched in `finish`).
    fn pass_if(&mut self, jump: u8, reg: u8, imm: i32) {
        self.exits.push(self.v.len());
        self.op(jump, reg, 0, 0, imm);
    }

    /// r0 = &state[the u32 key at r10-4]; none: return SK_PASS.
    fn lookup_or_pass(&mut self) {
        self.op(MOV64_REG, 2, 10, 0, 0);
        self.op(ADD64_IMM, 2, 0, 0, -4);
        self.op(LD_IMM64, 1, PSEUDO_MAP_FD, 0, self.state);
        self.op(0, 0, 0, 0, 0);
        self.op(CALL, 0, 0, 0, HELPER_MAP_LOOKUP);
        self.pass_if(JEQ_IMM, 0, 0);
    }

    fn finish(mut self) -> Vec<Insn> {
        let pass = self.v.len();
        self.op(MOV64_IMM, 0, 0, 0, SK_PASS);
        self.op(EXIT, 0, 0, 0, 0);
        for at in self.exits {
            self.v[at].off = (pass - at - 1) as i16;
        }
        self.v
    }
}

/// The program, for a group of up to `slots` sockets in `socks` whose
/// rotation is in `state` (see the module's documentation). Registers: r6 the context,
/// r7 the counter's number, then the slot's position.
fn program(state: RawFd, socks: RawFd, slots: u32) -> Vec<Insn> {
    let mut a = Asm { v: Vec::new(), exits: Vec::new(), state };
    a.op(MOV64_REG, 6, 1, 0, 0);
    // r7 = fetch_add(&state[0], 1)
    a.op(ST_W_IMM, 10, 0, -4, 0);
    a.lookup_or_pass();
    a.op(MOV64_IMM, 7, 0, 0, 1);
    a.op(ATOMIC_W, 0, 7, 0, ATOMIC_FETCH_ADD);
    // r1 = state[1] (K); nothing in rotation: let the kernel choose.
    a.op(ST_W_IMM, 10, 0, -4, 1);
    a.lookup_or_pass();
    a.op(LDX_W, 1, 0, 0, 0);
    a.pass_if(JEQ_IMM, 1, 0);
    // slot = state[2 + r7 % K], kept at r10-8
    a.op(MOD32_REG, 7, 1, 0, 0);
    a.op(ADD32_IMM, 7, 0, 0, 2);
    a.op(STX_W, 10, 7, -4, 0);
    a.lookup_or_pass();
    a.op(LDX_W, 1, 0, 0, 0);
    a.op(STX_W, 10, 1, -8, 0);
    // bpf_sk_select_reuseport(ctx, socks, &slot, 0): a failed pick leaves
    // the choice to the kernel.
    a.op(MOV64_REG, 1, 6, 0, 0);
    a.op(LD_IMM64, 2, PSEUDO_MAP_FD, 0, socks);
    a.op(0, 0, 0, 0, 0);
    a.op(MOV64_REG, 3, 10, 0, 0);
    a.op(ADD64_IMM, 3, 0, 0, -8);
    a.op(MOV64_IMM, 4, 0, 0, 0);
    a.op(CALL, 0, 0, 0, HELPER_SK_SELECT_REUSEPORT);
    a.pass_if(JNE_IMM, 0, 0);
    // state[2 + S + slot] += 1
    a.op(LDX_W, 1, 10, -8, 0);
    a.op(ADD32_IMM, 1, 0, 0, 2 + slots as i32);
    a.op(STX_W, 10, 1, -4, 0);
    a.lookup_or_pass();
    a.op(MOV64_IMM, 1, 0, 0, 1);
    a.op(ATOMIC_W, 0, 1, 0, ATOMIC_ADD);
    a.finish()
}

/// `bpf(cmd, attr, size)`, the attribute block as the kernel's union.
fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded 128-byte block laid out as the
    // kernel's `union bpf_attr` for `cmd` (only the leading fields are set;
    // the kernel accepts a longer block whose tail is zero). Every pointer
    // stored in it points to memory that outlives this call.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr) as libc::c_uint)
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_of(r: libc::c_long) -> OwnedFd {
    // SAFETY: a successful `BPF_MAP_CREATE`/`BPF_PROG_LOAD` returns a new
    // file descriptor (`O_CLOEXEC`) that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

fn lo_hi(a: u32, b: u32) -> u64 {
    u64::from(a) | (u64::from(b) << 32)
}

fn create_map(kind: u32, value_size: u32, entries: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = lo_hi(kind, 4); // map_type, key_size
    attr[1] = lo_hi(value_size, entries); // value_size, max_entries
    bpf(BPF_MAP_CREATE, &mut attr).map(fd_of)
}

fn update(map: BorrowedFd<'_>, key: u32, value: &[u8]) -> io::Result<()> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(map.as_raw_fd() as u32);
    attr[1] = &key as *const u32 as u64;
    attr[2] = value.as_ptr() as u64;
    attr[3] = 0; // BPF_ANY
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// The `u32` at `key` of the array `map`.
fn lookup(map: BorrowedFd<'_>, key: u32) -> io::Result<u32> {
    let mut value = 0u32;
    let mut attr = [0u64; 16];
    attr[0] = u64::from(map.as_raw_fd() as u32);
    attr[1] = &key as *const u32 as u64;
    attr[2] = &mut value as *mut u32 as u64;
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
    Ok(value)
}

/// The `max_entries` of `map` (`struct bpf_map_info`'s fifth field).
fn max_entries(map: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = [0u32; 20];
    let mut attr = [0u64; 16];
    attr[0] = lo_hi(map.as_raw_fd() as u32, std::mem::size_of_val(&info) as u32); // bpf_fd, info_len
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info[4])
}

/// Why the program could not be set up: the step, the system error, and
/// the verifier's last line when it refused the program.
#[derive(Debug)]
pub struct Refused {
    pub step: &'static str,
    pub error: io::Error,
    pub verifier: Option<String>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.error)?;
        if let Some(line) = &self.verifier {
            write!(f, " (verifier: {line})")?;
        }
        Ok(())
    }
}

fn refused(step: &'static str) -> impl FnOnce(io::Error) -> Refused {
    move |error| Refused { step, error, verifier: None }
}

/// One group's program and maps. Dropping it leaves the program attached
/// for as long as the group's sockets live.
#[derive(Debug)]
pub struct Rotation {
    state: OwnedFd,
    socks: OwnedFd,
    program: OwnedFd,
    /// Sockets in the array (slots 0…slots-1), and room for how many.
    slots: u32,
    capacity: u32,
    /// What the state map holds now (K and the list), to write only changes.
    active: Vec<u32>,
}

impl Rotation {
    /// Sets up round-robin for `sockets`, one per slot, bound with
    /// `SO_REUSEPORT` to one address and listening, with room for
    /// `capacity` slots (at least as many as `sockets`). No slot is in
    /// rotation until [`Rotation::set`] says so.
    pub fn attach(sockets: &[BorrowedFd<'_>], capacity: u32) -> Result<Rotation, Refused> {
        let slots = sockets.len() as u32;
        let capacity = capacity.max(slots).max(1);
        let state = create_map(BPF_MAP_TYPE_ARRAY, 4, 2 + 2 * capacity)
            .map_err(refused("cannot create a BPF map"))?;
        let socks = create_map(BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 4, capacity)
            .map_err(refused("cannot create a BPF reuseport socket array"))?;
        for (k, socket) in sockets.iter().enumerate() {
            let fd = socket.as_raw_fd() as u32;
            update(socks.as_fd(), k as u32, &fd.to_ne_bytes())
                .map_err(refused("cannot put a listening socket into the BPF socket array"))?;
        }
        let program = load(state.as_raw_fd(), socks.as_raw_fd(), capacity)?;
        if let Some(first) = sockets.first() {
            let fd = program.as_raw_fd();
            // SAFETY: `first` is an open socket; the option's value is an
            // int (the program's fd), passed by pointer with its size.
            let r = unsafe {
                libc::setsockopt(
                    first.as_raw_fd(),
                    libc::SOL_SOCKET,
                    SO_ATTACH_REUSEPORT_EBPF,
                    &fd as *const RawFd as *const libc::c_void,
                    std::mem::size_of::<RawFd>() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(refused("cannot attach the BPF program (SO_ATTACH_REUSEPORT_EBPF)")(
                    io::Error::last_os_error(),
                ));
            }
        }
        Ok(Rotation { state, socks, program, slots, capacity, active: Vec::new() })
    }

    /// Puts `socket` (of the group, listening) in the array as slot
    /// `slot` (at most one past the last), not in rotation yet; refused
    /// when the array is full.
    pub fn add(&mut self, slot: u32, socket: BorrowedFd<'_>) -> io::Result<()> {
        if slot >= self.capacity || slot > self.slots {
            return Err(io::Error::other(format!("the rotation has room for {} slots", self.capacity)));
        }
        update(self.socks.as_fd(), slot, &(socket.as_raw_fd() as u32).to_ne_bytes())?;
        self.slots = self.slots.max(slot + 1);
        Ok(())
    }

    /// Moves what waits on `socket` (slot `slot`'s, of the group) to the
    /// slots in rotation: it stops listening, which hands its queue (and
    /// its handshakes under way) to the program's choice, or resets them on
    /// a kernel before 5.14; then it listens again with `backlog` and takes
    /// its place in the array back. How many connections were waiting.
    pub fn flush(&mut self, slot: u32, socket: BorrowedFd<'_>, backlog: i32) -> io::Result<u32> {
        let waiting = accept_queue(socket)?;
        // SAFETY: plain calls on an open socket, with no pointers.
        if unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RD) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::listen(socket.as_raw_fd(), backlog) } != 0 {
            return Err(io::Error::last_os_error());
        }
        update(self.socks.as_fd(), slot, &(socket.as_raw_fd() as u32).to_ne_bytes())?;
        Ok(waiting)
    }

    /// The most slots the group takes.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The rotation a previous image of main set up for a group of
    /// `slots` sockets, from its fds (as [`Rotation::fds`] gave them): the
    /// program stays attached, and the slots in rotation are read back
    /// from the state map, its room from the socket array's size.
    pub fn resume(state: OwnedFd, socks: OwnedFd, program: OwnedFd, slots: u32) -> io::Result<Rotation> {
        let capacity = max_entries(socks.as_fd())?;
        if slots > capacity {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "more slots than the socket array holds"));
        }
        let k = lookup(state.as_fd(), 1)?;
        if k > slots {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more slots in rotation than in the group",
            ));
        }
        let active = (0..k).map(|i| lookup(state.as_fd(), 2 + i)).collect::<io::Result<_>>()?;
        Ok(Rotation { state, socks, program, slots, capacity, active })
    }

    /// The state map, the socket array and the program, in that order:
    /// what the next image of main takes over.
    pub fn fds(&self) -> [BorrowedFd<'_>; 3] {
        [self.state.as_fd(), self.socks.as_fd(), self.program.as_fd()]
    }

    /// The slots in rotation now, in order.
    pub fn active(&self) -> &[u32] {
        &self.active
    }

    /// How many connections the program has handed to `slot` so far
    /// (wrapping at `u32::MAX`).
    pub fn handed(&self, slot: u32) -> io::Result<u32> {
        lookup(self.state.as_fd(), 2 + self.capacity + slot)
    }

    /// Puts exactly `active` (slot numbers below the group's size, in the
    /// order the rotation takes them) in rotation.
    pub fn set(&mut self, active: &[u32]) -> io::Result<()> {
        let active: Vec<u32> = active.iter().copied().filter(|&k| k < self.slots).collect();
        if active == self.active {
            return Ok(());
        }
        // The list first, then its length: a connection that comes in
        // between picks from a list that is only partly new, never past it.
        let shrinking = active.len() < self.active.len();
        if shrinking {
            update(self.state.as_fd(), 1, &(active.len() as u32).to_ne_bytes())?;
        }
        for (i, k) in active.iter().enumerate() {
            update(self.state.as_fd(), 2 + i as u32, &k.to_ne_bytes())?;
        }
        if !shrinking {
            update(self.state.as_fd(), 1, &(active.len() as u32).to_ne_bytes())?;
        }
        self.active = active;
        Ok(())
    }
}

/// Loads the program as one that also picks where the connections of a
/// socket that stops listening go (Linux 5.14 and later), else as one that
/// picks for new connections only.
fn load(state: RawFd, socks: RawFd, slots: u32) -> Result<OwnedFd, Refused> {
    match load_as(state, socks, slots, BPF_SK_REUSEPORT_SELECT_OR_MIGRATE) {
        Err(e) if e.error.raw_os_error() == Some(libc::EINVAL) => {
            load_as(state, socks, slots, BPF_SK_REUSEPORT_SELECT)
        }
        loaded => loaded,
    }
}

fn load_as(state: RawFd, socks: RawFd, slots: u32, attach: u32) -> Result<OwnedFd, Refused> {
    let insns = program(state, socks, slots);
    let license = c"Dual MIT/GPL";
    let mut log = vec![0u8; LOG_SIZE];
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = [0u64; 16];
        attr[0] = lo_hi(BPF_PROG_TYPE_SK_REUSEPORT, insns.len() as u32);
        attr[1] = insns.as_ptr() as u64;
        attr[2] = license.as_ptr() as u64;
        if let Some(log) = log {
            attr[3] = lo_hi(1, log.len() as u32); // log_level, log_size
            attr[4] = log.as_mut_ptr() as u64;
        }
        // kern_version, prog_flags (attr[5]); prog_name (attr[6..8]):
        // "panzer_rr"; prog_ifindex, expected_attach_type (attr[8]).
        attr[6] = u64::from_ne_bytes(*b"panzer_r");
        attr[7] = u64::from(b'r');
        attr[8] = lo_hi(0, attach);
        bpf(BPF_PROG_LOAD, &mut attr).map(fd_of)
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(error) => {
            // Again with the verifier's log, to say why.
            let _ = attempt(Some(&mut log));
            let text =
                String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned();
            let verifier = text.lines().rfind(|l| !l.trim().is_empty()).map(str::to_owned);
            Err(Refused { step: "the kernel refused the BPF program (bpf BPF_PROG_LOAD)", error, verifier })
        }
    }
}

/// How many connections wait in the accept queue of the listening TCP
/// socket `fd` (what the kernel reports as `tcpi_unacked` for a listener).
pub fn accept_queue(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: `tcp_info` is plain old data: all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes, and `len` is passed by
    // pointer for the kernel to say how much it wrote.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn reuseport_listener(port: u16) -> TcpListener {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
        s.listen(64).unwrap();
        s.into()
    }

    /// Where the kernel allows BPF (root, a recent kernel), connections go
    /// to the slots in rotation, in turn.
    #[test]
    fn connections_go_to_the_slots_in_turn() {
        let first = reuseport_listener(0);
        let port = first.local_addr().unwrap().port();
        let listeners: Vec<TcpListener> =
            std::iter::once(first).chain((1..4).map(|_| reuseport_listener(port))).collect();
        let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|l| l.as_fd()).collect();
        let mut rotation = match Rotation::attach(&fds[..3], 8) {
            Ok(r) => r,
            Err(e) if e.error.raw_os_error() == Some(libc::EPERM) => return,
            Err(e) => panic!("{e}"),
        };
        // The fourth slot joins later, as a scale up adds it.
        rotation.add(3, fds[3]).unwrap();
        rotation.set(&[1, 3]).unwrap();
        for l in &listeners {
            l.set_nonblocking(true).unwrap();
        }
        let _clients: Vec<TcpStream> =
            (0..6).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut counts = [0; 4];
        while counts.iter().sum::<i32>() < 6 && std::time::Instant::now() < deadline {
            for (k, l) in listeners.iter().enumerate() {
                if l.accept().is_ok() {
                    counts[k] += 1;
                }
            }
        }
        assert_eq!(counts, [0, 3, 0, 3]);
        let handed: Vec<u32> = (0..4).map(|k| rotation.handed(k).unwrap()).collect();
        assert_eq!(handed, [0, 3, 0, 3]);
    }

    #[test]
    fn the_accept_queue_counts_connections_not_yet_accepted() {
        let listener = reuseport_listener(0);
        let port = listener.local_addr().unwrap().port();
        assert_eq!(accept_queue(listener.as_fd()).unwrap(), 0);
        let _clients: Vec<TcpStream> =
            (0..2).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while accept_queue(listener.as_fd()).unwrap() < 2 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(accept_queue(listener.as_fd()).unwrap(), 2);
        listener.accept().unwrap();
        assert_eq!(accept_queue(listener.as_fd()).unwrap(), 1);
    }
}
