//! The few rtnetlink requests topologies need, made synchronously from a
//! thread that is already inside the target namespace (see
//! [`crate::netns::run_in`]): the netlink socket is opened here, so it talks
//! to that thread's namespace.
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

use futures::TryStreamExt;
use netlink_packet_route::address::AddressHeaderFlag;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourFlag, NeighbourState};
use netlink_packet_route::route::{RouteFlag, RouteProtocol, RouteScope};
use rtnetlink::Handle;

use crate::TopoError;

pub(crate) struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
    netns: String,
}

/// A veth pair to create: the host end stays in the current namespace, the
/// peer is created directly in the namespace `peer_netns_fd` refers to.
pub(crate) struct Veth<'a> {
    pub host: &'a str,
    pub host_mac: [u8; 6],
    pub peer: &'a str,
    pub peer_mac: [u8; 6],
    pub peer_netns_fd: RawFd,
    pub mtu: u32,
    pub queues: u32,
}

/// A VXLAN device to create (`ip link add <name> address <mac> mtu <mtu>
/// type vxlan id <vni> dev <link> local <local> dstport <port> nolearning`).
pub(crate) struct Vxlan<'a> {
    pub name: &'a str,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub vni: u32,
    pub link: u32,
    pub local: Ipv4Addr,
    pub port: u16,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's namespace, named
    /// `netns` in errors.
    pub(crate) fn open(netns: &str) -> Result<Netlink, TopoError> {
        let io = |op: &'static str| {
            let netns = netns.to_string();
            move |error: std::io::Error| TopoError::Netns { netns, op, error }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(io("netlink runtime"))?;
        let (conn, handle, _) = {
            let _guard = rt.enter();
            rtnetlink::new_connection().map_err(io("netlink socket"))?
        };
        rt.spawn(conn);
        Ok(Netlink {
            rt,
            handle,
            netns: netns.to_string(),
        })
    }

    fn run<T>(
        &self,
        object: &str,
        op: impl Into<String>,
        fut: impl Future<Output = Result<T, rtnetlink::Error>>,
    ) -> Result<T, TopoError> {
        self.rt.block_on(fut).map_err(|error| TopoError::Netlink {
            netns: self.netns.clone(),
            object: object.to_string(),
            op: op.into(),
            error: Box::new(error),
        })
    }

    /// The index of the interface `name`, or `None` when there is none.
    pub(crate) fn link_index(&self, name: &str) -> Result<Option<u32>, TopoError> {
        let handle = self.handle.clone();
        let res = self.rt.block_on(async move {
            let handle = handle;
            handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next()
                .await
        });
        match res {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(error) => Err(TopoError::Netlink {
                netns: self.netns.clone(),
                object: name.to_string(),
                op: "get link".into(),
                error: Box::new(error),
            }),
        }
    }

    fn need_index(&self, name: &str) -> Result<u32, TopoError> {
        self.link_index(name)?.ok_or_else(|| TopoError::Conflict {
            object: format!("netns {} link {name}", self.netns),
            msg: "interface not found".into(),
        })
    }

    /// `ip link add <host> address <mac> mtu <mtu> numtxqueues <q> numrxqueues <q>
    ///  type veth peer name <peer> address <mac> mtu <mtu> netns <fd> ...`
    pub(crate) fn add_veth(&self, v: &Veth<'_>) -> Result<(), TopoError> {
        let mut peer = LinkMessage::default();
        peer.attributes.extend([
            LinkAttribute::IfName(v.peer.to_string()),
            LinkAttribute::Address(v.peer_mac.to_vec()),
            LinkAttribute::Mtu(v.mtu),
            LinkAttribute::NumTxQueues(v.queues),
            LinkAttribute::NumRxQueues(v.queues),
            LinkAttribute::NetNsFd(v.peer_netns_fd),
        ]);
        let mut req = self.handle.link().add();
        req.message_mut().attributes.extend([
            LinkAttribute::IfName(v.host.to_string()),
            LinkAttribute::Address(v.host_mac.to_vec()),
            LinkAttribute::Mtu(v.mtu),
            LinkAttribute::NumTxQueues(v.queues),
            LinkAttribute::NumRxQueues(v.queues),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]),
        ]);
        self.run(v.host, "add veth", req.execute())
    }

    /// `ip link set <name> up`.
    pub(crate) fn link_up(&self, name: &str) -> Result<u32, TopoError> {
        let index = self.need_index(name)?;
        self.run(name, "set up", self.handle.link().set(index).up().execute())?;
        Ok(index)
    }

    /// `ip link del <name>`; absent is fine.
    pub(crate) fn link_del(&self, name: &str) -> Result<(), TopoError> {
        let Some(index) = self.link_index(name)? else {
            return Ok(());
        };
        let handle = self.handle.clone();
        self.run(name, "delete link", async move {
            handle.link().del(index).execute().await
        })
    }

    /// `ip addr add <ip>/<prefix> dev <index> [nodad]`.
    pub(crate) fn addr_add(
        &self,
        ifname: &str,
        index: u32,
        ip: IpAddr,
        prefix: u8,
        nodad: bool,
    ) -> Result<(), TopoError> {
        let mut req = self.handle.address().add(index, ip, prefix);
        if nodad {
            req.message_mut()
                .header
                .flags
                .push(AddressHeaderFlag::Nodad);
        }
        self.run(ifname, format!("add address {ip}/{prefix}"), req.execute())
    }

    /// `ip route add <dst>/<len> [via <gw>] dev <index> [scope link]` (proto boot,
    /// as iproute2 does).
    pub(crate) fn route_v4(
        &self,
        ifname: &str,
        index: u32,
        dst: Ipv4Addr,
        len: u8,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), TopoError> {
        let mut req = self
            .handle
            .route()
            .add()
            .protocol(RouteProtocol::Boot)
            .v4()
            .destination_prefix(dst, len)
            .output_interface(index);
        req = match gateway {
            Some(gw) => req.gateway(gw),
            None => req.scope(RouteScope::Link),
        };
        let what = match gateway {
            Some(gw) => format!("add route {dst}/{len} via {gw}"),
            None => format!("add route {dst}/{len} scope link"),
        };
        self.run(ifname, what, req.execute())
    }

    /// `ip -6 route add <dst>/<len> via <gw> dev <index>`.
    pub(crate) fn route_v6(
        &self,
        ifname: &str,
        index: u32,
        dst: Ipv6Addr,
        len: u8,
        gateway: Ipv6Addr,
    ) -> Result<(), TopoError> {
        let req = self
            .handle
            .route()
            .add()
            .protocol(RouteProtocol::Boot)
            .v6()
            .destination_prefix(dst, len)
            .output_interface(index)
            .gateway(gateway);
        self.run(
            ifname,
            format!("add route {dst}/{len} via {gateway}"),
            req.execute(),
        )
    }

    /// `ip link add <name> type bridge` (STP off, the kernel default).
    pub(crate) fn add_bridge(&self, name: &str) -> Result<(), TopoError> {
        let req = self.handle.link().add().bridge(name.to_string());
        self.run(name, "add bridge", req.execute())
    }

    /// `ip link set <name> master <master>`.
    pub(crate) fn set_master(&self, name: &str, master: &str) -> Result<(), TopoError> {
        let index = self.need_index(name)?;
        let master_index = self.need_index(master)?;
        self.run(
            name,
            format!("set master {master}"),
            self.handle
                .link()
                .set(index)
                .controller(master_index)
                .execute(),
        )
    }

    /// Creates a VXLAN device (all attributes through `IFLA_VXLAN_*`).
    pub(crate) fn add_vxlan(&self, v: &Vxlan<'_>) -> Result<(), TopoError> {
        let mut req = self.handle.link().add();
        req.message_mut().attributes.extend([
            LinkAttribute::IfName(v.name.to_string()),
            LinkAttribute::Address(v.mac.to_vec()),
            LinkAttribute::Mtu(v.mtu),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![
                    InfoVxlan::Id(v.vni),
                    InfoVxlan::Link(v.link),
                    InfoVxlan::Local(v.local.octets().to_vec()),
                    InfoVxlan::Port(v.port),
                    InfoVxlan::Learning(false),
                ])),
            ]),
        ]);
        self.run(v.name, format!("add vxlan id {}", v.vni), req.execute())
    }

    /// `ip neigh add <ip> lladdr <mac> dev <index> nud permanent`.
    pub(crate) fn neigh_add(
        &self,
        ifname: &str,
        index: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), TopoError> {
        let req = self
            .handle
            .neighbours()
            .add(index, ip)
            .link_local_address(&mac)
            .state(NeighbourState::Permanent);
        self.run(
            ifname,
            format!(
                "add neighbour {ip} lladdr {}",
                crate::cluster::fmt_mac(&mac)
            ),
            req.execute(),
        )
    }

    /// `bridge fdb append <mac> dev <index> dst <dst> self permanent`: an
    /// `RTM_NEWNEIGH` of family `AF_BRIDGE` with `NTF_SELF`, so the VXLAN
    /// device's own forwarding database gets it.
    pub(crate) fn fdb_add(
        &self,
        ifname: &str,
        index: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
    ) -> Result<(), TopoError> {
        let req = self
            .handle
            .neighbours()
            .add_bridge(index, &mac)
            .flags(vec![NeighbourFlag::Own])
            .state(NeighbourState::Permanent)
            .destination(IpAddr::V4(dst));
        self.run(
            ifname,
            format!("add fdb {} dst {dst}", crate::cluster::fmt_mac(&mac)),
            req.execute(),
        )
    }

    /// `ip route add <dst>/<len> dev <index>` (scope link, proto boot).
    pub(crate) fn route_dev(
        &self,
        ifname: &str,
        index: u32,
        dst: IpAddr,
        len: u8,
    ) -> Result<(), TopoError> {
        let what = format!("add route {dst}/{len} dev {ifname}");
        match dst {
            IpAddr::V4(d) => self.route_v4(ifname, index, d, len, None),
            IpAddr::V6(d) => {
                let req = self
                    .handle
                    .route()
                    .add()
                    .protocol(RouteProtocol::Boot)
                    .scope(RouteScope::Link)
                    .v6()
                    .destination_prefix(d, len)
                    .output_interface(index);
                self.run(ifname, what, req.execute())
            }
        }
    }

    /// `ip route add <dst>/<len> via <gw> dev <index> onlink` (proto boot).
    pub(crate) fn route_onlink(
        &self,
        ifname: &str,
        index: u32,
        dst: IpAddr,
        len: u8,
        gateway: IpAddr,
    ) -> Result<(), TopoError> {
        let what = format!("add route {dst}/{len} via {gateway} onlink");
        match (dst, gateway) {
            (IpAddr::V4(d), IpAddr::V4(g)) => {
                let mut req = self
                    .handle
                    .route()
                    .add()
                    .protocol(RouteProtocol::Boot)
                    .v4()
                    .destination_prefix(d, len)
                    .output_interface(index)
                    .gateway(g);
                req.message_mut().header.flags.push(RouteFlag::Onlink);
                self.run(ifname, what, req.execute())
            }
            (IpAddr::V6(d), IpAddr::V6(g)) => {
                let mut req = self
                    .handle
                    .route()
                    .add()
                    .protocol(RouteProtocol::Boot)
                    .v6()
                    .destination_prefix(d, len)
                    .output_interface(index)
                    .gateway(g);
                req.message_mut().header.flags.push(RouteFlag::Onlink);
                self.run(ifname, what, req.execute())
            }
            _ => unreachable!("route_onlink: mixed families {dst} via {gateway}"),
        }
    }

    /// `ip route add <dst>/<len> via <gw> dev <index> onlink src <src>` (proto
    /// boot): `route_onlink` with a preferred source address.
    pub(crate) fn route_onlink_src(
        &self,
        ifname: &str,
        index: u32,
        dst: IpAddr,
        len: u8,
        gateway: IpAddr,
        src: IpAddr,
    ) -> Result<(), TopoError> {
        use netlink_packet_route::route::{RouteAddress, RouteAttribute};
        let what = format!("add route {dst}/{len} via {gateway} onlink src {src}");
        let mut req = self
            .handle
            .route()
            .add()
            .protocol(RouteProtocol::Boot)
            .output_interface(index);
        let msg = req.message_mut();
        let (d, g, s) = match (dst, gateway, src) {
            (IpAddr::V4(d), IpAddr::V4(g), IpAddr::V4(s)) => (
                RouteAddress::Inet(d),
                RouteAddress::Inet(g),
                RouteAddress::Inet(s),
            ),
            (IpAddr::V6(d), IpAddr::V6(g), IpAddr::V6(s)) => (
                RouteAddress::Inet6(d),
                RouteAddress::Inet6(g),
                RouteAddress::Inet6(s),
            ),
            _ => {
                return Err(TopoError::Options {
                    field: "route",
                    msg: format!("{what}: mixed address families"),
                })
            }
        };
        msg.header.address_family = match dst {
            IpAddr::V4(_) => netlink_packet_route::AddressFamily::Inet,
            IpAddr::V6(_) => netlink_packet_route::AddressFamily::Inet6,
        };
        msg.header.destination_prefix_length = len;
        msg.header.flags.push(RouteFlag::Onlink);
        msg.attributes.push(RouteAttribute::Destination(d));
        msg.attributes.push(RouteAttribute::Gateway(g));
        msg.attributes.push(RouteAttribute::PrefSource(s));
        self.run(ifname, what, req.execute())
    }

    /// The index and MAC address of the interface `name`, or `None`.
    pub(crate) fn link_mac(&self, name: &str) -> Result<Option<(u32, Vec<u8>)>, TopoError> {
        let handle = self.handle.clone();
        let res = self.rt.block_on(async move {
            handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next()
                .await
        });
        match res {
            Ok(Some(msg)) => {
                let mac = msg
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::Address(m) => Some(m.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                Ok(Some((msg.header.index, mac)))
            }
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(error) => Err(TopoError::Netlink {
                netns: self.netns.clone(),
                object: name.to_string(),
                op: "get link".into(),
                error: Box::new(error),
            }),
        }
    }

    /// The addresses (with prefix lengths) on the interface `index`.
    pub(crate) fn addrs_of(
        &self,
        ifname: &str,
        index: u32,
    ) -> Result<Vec<(IpAddr, u8)>, TopoError> {
        use netlink_packet_route::address::AddressAttribute;
        let handle = self.handle.clone();
        let msgs = self.run(ifname, "list addresses", async move {
            handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect::<Vec<_>>()
                .await
        })?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }
}
