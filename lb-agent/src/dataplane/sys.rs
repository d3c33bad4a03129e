//! The bpf(2) commands aya does not offer: batched map updates, detaching a pinned link, and the
//! raw syscall the kernel feature probes use.

use std::{ffi::CString, path::Path};

/// Detaches the bpf_link pinned at `path` from its hook, synchronously (BPF_LINK_DETACH).
pub(super) fn detach_pinned_link(path: &Path) -> std::io::Result<()> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // obj_get.pathname: the kernel reads the NUL-terminated path, alive across the call.
    let fd = bpf(BPF_OBJ_GET, cpath.as_ptr() as u64)?;
    // SAFETY: the kernel just returned this descriptor to us; the OwnedFd closes it.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // link_detach.link_fd
    bpf(BPF_LINK_DETACH, std::os::fd::AsRawFd::as_raw_fd(&fd) as u64)?;
    Ok(())
}

/// BPF_MAP_UPDATE_BATCH: `keys[i] -> values[i]` into the map `fd`, in order, in one call (the
/// kernel reports how many it wrote; a partial write is an error here).
pub(super) fn update_batch<K: aya::Pod, V: aya::Pod>(
    fd: std::os::fd::RawFd,
    keys: &[K],
    values: &[V],
) -> std::io::Result<()> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    // union bpf_attr's batch member: in_batch, out_batch, keys, values, count (u32) and map_fd
    // (u32), elem_flags, flags; zeroed past it.
    let mut attr = [0u64; 16];
    attr[2] = keys.as_ptr() as u64;
    attr[3] = values.as_ptr() as u64;
    attr[4] = keys.len() as u64 | (fd as u32 as u64) << 32;
    // `keys` and `values` hold `count` elements of the map's key and value sizes and outlive
    // the call.
    sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    let written = attr[4] as u32 as usize;
    if written != keys.len() {
        return Err(std::io::Error::other(format!(
            "batch update wrote {written} of {} entries",
            keys.len()
        )));
    }
    Ok(())
}

/// The bpf(2) syscall for a command whose attribute union needs only its first 8 bytes.
fn bpf(cmd: libc::c_long, first: u64) -> std::io::Result<libc::c_long> {
    // union bpf_attr, zeroed past the first field (the kernel checks unused bytes are 0).
    let mut attr = [0u64; 16];
    attr[0] = first;
    sys_bpf(cmd, &mut attr)
}

/// BPF_PROG_LOAD.
pub(super) const BPF_PROG_LOAD: libc::c_long = 5;
/// BPF_PROG_TEST_RUN.
pub(super) const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// BPF_LINK_CREATE.
pub(super) const BPF_LINK_CREATE: libc::c_long = 28;

/// The bpf(2) syscall with the attribute union `attr` (the kernel writes some commands'
/// results back into it). Any pointer in `attr` is the caller's to keep valid.
pub(super) fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a bpf_attr of the size passed, zeroed where `cmd` reads nothing.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}
