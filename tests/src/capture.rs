//! [`Capture`]: the frames an interface receives, with the kernel's checksum status of each
//! (AF_PACKET with PACKET_AUXDATA), for checking the checksums of rewritten packets.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result};

use crate::netns::NetNs;

/// One captured frame and what the kernel said about its checksum.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The Ethernet frame.
    pub data: Vec<u8>,
    /// `tpacket_auxdata.tp_status` (TP_STATUS_CSUMNOTREADY: CHECKSUM_PARTIAL).
    pub status: u32,
}

/// An AF_PACKET capture of the frames an interface receives (not those it sends), read on a
/// background thread until [`Capture::stop`].
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Frame>>>,
}

impl Capture {
    /// Start capturing on `ifname` in `ns`.
    pub fn start(ns: &NetNs, ifname: &str) -> Result<Capture> {
        let ifindex = ns.ifindex(ifname)?;
        let fd = ns
            .enter(|| packet_socket(ifindex))
            .with_context(|| format!("AF_PACKET socket on {ifname} in {}", ns.name()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || read_frames(fd, &stop))
        };
        Ok(Capture {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop and return every frame received.
    pub fn stop(mut self) -> Vec<Frame> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .expect("capture thread")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn packet_socket(ifindex: u32) -> std::io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain syscalls on a socket this function owns; every pointer is to a live local.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        let rcvbuf: libc::c_int = 4 << 20;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        for (level, opt, ptr, len) in [
            (
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>(),
            ),
            (
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &rcvbuf as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>(),
            ),
            (
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>(),
            ),
        ] {
            if libc::setsockopt(fd.as_raw_fd(), level, opt, ptr, len as u32) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(fd)
    }
}

fn read_frames(fd: OwnedFd, stop: &AtomicBool) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut cbuf = [0u64; 16];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: recvmsg writes only into `buf`, `sll` and `cbuf`, all live and sized as told.
        unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = &mut sll as *mut libc::sockaddr_ll as *mut libc::c_void;
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = std::mem::size_of_val(&cbuf);
            let n = libc::recvmsg(fd.as_raw_fd(), &mut msg, 0);
            if n < 0 {
                continue;
            }
            if sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let mut status = 0;
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_PACKET
                    && (*cmsg).cmsg_type == libc::PACKET_AUXDATA
                {
                    let aux: libc::tpacket_auxdata =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const _);
                    status = aux.tp_status;
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            frames.push(Frame {
                data: buf[..n as usize].to_vec(),
                status,
            });
        }
    }
    frames
}
