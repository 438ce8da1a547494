//! Memory accesses that report a fault instead of dying from it.
//!
//! Each access is one instruction in an inline-asm block that first stores
//! the address of a recovery label in [`RECOVER`]. The SIGSEGV/SIGBUS
//! handler moves the interrupted RIP to that label and sets RAX to say which
//! signal came; without a probe in progress it restores the default action
//! and returns, so that a genuine crash still crashes.
//!
//! Only the runner process (single-threaded, see `mm-host-runner`) installs
//! the handler.

use std::{
    arch::asm,
    ptr::addr_of_mut,
    sync::atomic::{AtomicBool, Ordering},
};

/// What an access did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Completed; the byte read (0 for writes and executes).
    Ok(u8),
    /// SIGSEGV.
    Segv,
    /// SIGBUS.
    Bus,
}

/// Recovery RIP of the probe in progress, 0 when none.
static mut RECOVER: u64 = 0;
/// The probe in progress is an execute (`call`): on a fault at the target
/// the return address must be popped.
static EXEC: AtomicBool = AtomicBool::new(false);

extern "C" fn on_fault(sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: called by the kernel with a valid ucontext; RECOVER is only
    // written by this thread's probes.
    unsafe {
        let recover = *addr_of_mut!(RECOVER);
        if recover == 0 {
            libc::signal(sig, libc::SIG_DFL);
            return;
        }
        let uc = &mut *ctx.cast::<libc::ucontext_t>();
        let regs = &mut uc.uc_mcontext.gregs;
        regs[libc::REG_RIP as usize] = recover as i64;
        regs[libc::REG_RAX as usize] = if sig == libc::SIGBUS { 2 } else { 1 };
        if EXEC.load(Ordering::Relaxed) {
            regs[libc::REG_RSP as usize] += 8;
        }
        *addr_of_mut!(RECOVER) = 0;
    }
}

/// Install the SIGSEGV and SIGBUS handlers.
pub fn install() {
    // SAFETY: a zeroed sigaction with a valid handler and flags.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_fault as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}

fn status(code: u64, value: u8) -> Probe {
    match code {
        0 => Probe::Ok(value),
        2 => Probe::Bus,
        _ => Probe::Segv,
    }
}

/// Read the byte at `addr`.
pub fn read(addr: u64) -> Probe {
    let code: u64;
    let value: u64;
    // SAFETY: the access may fault; the handler resumes at label 2 with RAX
    // set. No stack use.
    unsafe {
        asm!(
            "xor eax, eax",
            "lea {tmp}, [rip + 2f]",
            "mov qword ptr [{rec}], {tmp}",
            "movzx {val:e}, byte ptr [{addr}]",
            "2:",
            "mov qword ptr [{rec}], 0",
            addr = in(reg) addr,
            rec = in(reg) addr_of_mut!(RECOVER),
            tmp = out(reg) _,
            val = out(reg) value,
            out("rax") code,
            options(nostack),
        );
    }
    status(code, value as u8)
}

/// Write `v` at `addr`.
pub fn write(addr: u64, v: u8) -> Probe {
    let code: u64;
    // SAFETY: as in read().
    unsafe {
        asm!(
            "xor eax, eax",
            "lea {tmp}, [rip + 2f]",
            "mov qword ptr [{rec}], {tmp}",
            "mov byte ptr [{addr}], {v}",
            "2:",
            "mov qword ptr [{rec}], 0",
            addr = in(reg) addr,
            v = in(reg_byte) v,
            rec = in(reg) addr_of_mut!(RECOVER),
            tmp = out(reg) _,
            out("rax") code,
            options(nostack),
        );
    }
    status(code, 0)
}

/// Call `addr`, which must hold a `ret` (0xc3) or fault.
pub fn exec(addr: u64) -> Probe {
    let code: u64;
    EXEC.store(true, Ordering::Relaxed);
    // SAFETY: the callee is a lone `ret` or faults at its first byte, in
    // which case the handler pops the return address and resumes at 2.
    unsafe {
        asm!(
            "xor eax, eax",
            "lea rcx, [rip + 2f]",
            "mov qword ptr [rdx], rcx",
            "call rdi",
            "2:",
            "mov qword ptr [rdx], 0",
            in("rdi") addr,
            in("rdx") addr_of_mut!(RECOVER),
            out("rax") code,
            out("rcx") _,
            clobber_abi("C"),
        );
    }
    EXEC.store(false, Ordering::Relaxed);
    status(code, 0)
}
