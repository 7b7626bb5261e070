//! The interface every worker's UMEM is anchored on.
//!
//! libxdp (under xsk-rs) makes a UMEM's own descriptor the FIRST socket
//! created on it, and keeps that descriptor open and bound to the first
//! socket's (interface, queue) for the UMEM's whole life, even after that
//! socket is deleted; every later socket binds with `XDP_SHARED_UMEM`
//! naming it. Two failures follow when the first socket is a pod's or the
//! underlay's (both measured, `dataplane/tests/dp_traffic.rs`):
//! - its interface deleted (the first pod deleted): the descriptor is
//!   unbound and every later bind fails with EBADF — no pod can attach
//!   until the dataplane restarts;
//! - its port removed and added back on the same interface (the underlay
//!   when the last peer leaves and one comes back): the kernel takes the
//!   new socket for one on the same queue as the UMEM's and refuses its own
//!   fill ring with EINVAL.
//!
//! So before any port, each worker binds its UMEM's first socket on a
//! queue of its own of a veth the dataplane owns ([`ANCHOR_IFNAME`], one
//! queue per worker), which no snapshot names and nothing deletes while the
//! dataplane runs. The socket is never in an XSKMAP: no frame reaches it.
//!
//! In copy mode only: the first socket decides the UMEM's mode, and a veth
//! has no zero-copy, so with `zero_copy` configured the first port's socket
//! stays the UMEM's (and the limitation above with it; docs/datapath.md).
//!
//! Written on rtnetlink (already the project's netlink crate, weir-topo)
//! rather than shelling out to `ip`: the dataplane may run in a container
//! without iproute2.

use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};

/// The anchor veth in the dataplane's network namespace (its peer is
/// [`ANCHOR_PEER`]).
pub const ANCHOR_IFNAME: &str = "weir-xsk0";
pub const ANCHOR_PEER: &str = "weir-xsk1";

/// The anchor veth; deleted on drop.
#[derive(Debug)]
pub struct AnchorLink {
    _priv: (),
}

/// Runs `f` on a runtime of its own, on a thread of its own (the caller
/// may be inside another runtime, where `block_on` would panic); a new
/// thread starts in its creator's network namespace.
fn on_netlink<T: Send>(
    f: impl FnOnce(
            rtnetlink::Handle,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send>>
        + Send,
) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| format!("netlink runtime: {e}"))?;
            rt.block_on(async {
                let (conn, handle, _) =
                    rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
                tokio::spawn(conn);
                f(handle).await
            })
        })
        .join()
        .unwrap_or_else(|_| Err("netlink thread panicked".into()))
    })
}

async fn index_of(handle: &rtnetlink::Handle, name: &str) -> Result<Option<u32>, rtnetlink::Error> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m.map(|m| m.header.index)),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e),
    }
}

async fn delete(handle: &rtnetlink::Handle) -> Result<(), rtnetlink::Error> {
    if let Some(i) = index_of(handle, ANCHOR_IFNAME).await? {
        handle.link().del(i).execute().await?;
    }
    Ok(())
}

impl AnchorLink {
    /// Creates the anchor veth with `queues` queues in the calling thread's
    /// network namespace (a leftover of a dataplane that died is replaced).
    pub fn create(queues: u32) -> Result<AnchorLink, String> {
        on_netlink(move |handle| {
            Box::pin(async move {
                delete(&handle)
                    .await
                    .map_err(|e| format!("deleting a leftover {ANCHOR_IFNAME}: {e}"))?;
                let mut peer = LinkMessage::default();
                peer.attributes.extend([
                    LinkAttribute::IfName(ANCHOR_PEER.to_string()),
                    LinkAttribute::NumTxQueues(queues),
                    LinkAttribute::NumRxQueues(queues),
                ]);
                let mut req = handle.link().add();
                req.message_mut().attributes.extend([
                    LinkAttribute::IfName(ANCHOR_IFNAME.to_string()),
                    LinkAttribute::NumTxQueues(queues),
                    LinkAttribute::NumRxQueues(queues),
                    LinkAttribute::LinkInfo(vec![
                        LinkInfo::Kind(InfoKind::Veth),
                        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
                    ]),
                ]);
                req.execute()
                    .await
                    .map_err(|e| format!("creating {ANCHOR_IFNAME}: {e}"))
            })
        })?;
        Ok(AnchorLink { _priv: () })
    }
}

impl Drop for AnchorLink {
    fn drop(&mut self) {
        let res = on_netlink(|handle| {
            Box::pin(async move { delete(&handle).await.map_err(|e| e.to_string()) })
        });
        if let Err(e) = res {
            log::warn!("deleting {ANCHOR_IFNAME}: {e}");
        }
    }
}
