//! The DNS responder replicas ask for `*.flotilla`: `web.flotilla` is an A
//! record for the mesh address the question came to, and
//! `_http._tcp.web.flotilla` an SRV record with the service port of `web`'s
//! port `http`. Any other name is passed to the host's own resolver, since
//! the replicas' Docker DNS forwards everything it cannot answer here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::Service;
use flotilla_api::spec::Protocol;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// Names under this domain are answered here.
pub const DOMAIN: &str = "flotilla";

/// Short, since replicas come and go and the answer is the mesh anyway.
const TTL: u32 = 5;

/// How long the host's resolver gets to answer a forwarded question.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// Answers questions on `socket` until the task is aborted.
pub async fn serve(
    socket: UdpSocket,
    services: watch::Receiver<Arc<Vec<Service>>>,
    upstream: Option<SocketAddr>,
) {
    let socket = Arc::new(socket);
    let Ok(local) = socket.local_addr() else { return };
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((len, client)) = socket.recv_from(&mut buffer).await else { continue };
        let question = buffer[..len].to_vec();
        let answer = {
            let services = services.borrow();
            answer(&question, local.ip(), &services)
        };
        match answer {
            Answer::Reply(bytes) => {
                let _ = socket.send_to(&bytes, client).await;
            }
            Answer::Forward => {
                let socket = Arc::clone(&socket);
                tokio::spawn(async move {
                    let reply = match upstream {
                        Some(upstream) => forward(&question, upstream).await,
                        None => None,
                    };
                    let reply = reply.or_else(|| failure(&question, ResponseCode::ServFail));
                    if let Some(reply) = reply {
                        let _ = socket.send_to(&reply, client).await;
                    }
                });
            }
            Answer::Drop => {}
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Answer {
    Reply(Vec<u8>),
    /// Not a `*.flotilla` name: the host's resolver answers it.
    Forward,
    /// Not a question we can read.
    Drop,
}

/// The answer to one DNS message, for a mesh reached at `mesh`.
pub fn answer(question: &[u8], mesh: IpAddr, services: &[Service]) -> Answer {
    let Ok(message) = Message::from_vec(question) else { return Answer::Drop };
    if message.metadata.message_type != MessageType::Query || message.metadata.op_code != OpCode::Query {
        return failure(question, ResponseCode::NotImp).map_or(Answer::Drop, Answer::Reply);
    }
    let Some(query) = message.queries.first() else { return Answer::Drop };
    let name = query.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    let Some(inside) = name.strip_suffix(DOMAIN).and_then(|n| n.strip_suffix('.')) else {
        return Answer::Forward;
    };
    let mut reply = Message::response(message.metadata.id, OpCode::Query);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = message.metadata.recursion_desired;
    reply.add_query(query.clone());
    match records(inside, query, mesh, services) {
        Some(records) => {
            for record in records {
                reply.add_answer(record);
            }
        }
        None => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    reply.to_vec().map_or(Answer::Drop, Answer::Reply)
}

/// The records for `inside` (the name without `.flotilla`), or `None` when
/// no such name exists.
fn records(inside: &str, query: &Query, mesh: IpAddr, services: &[Service]) -> Option<Vec<Record>> {
    let owner = query.name().clone();
    let labels: Vec<&str> = inside.split('.').collect();
    match labels.as_slice() {
        [service] => {
            services.iter().find(|s| s.name.as_str() == *service)?;
            let record = match (query.query_type(), mesh) {
                (RecordType::A, IpAddr::V4(ip)) => Some(Record::from_rdata(owner, TTL, RData::A(A(ip)))),
                (RecordType::AAAA, IpAddr::V6(ip)) => {
                    Some(Record::from_rdata(owner, TTL, RData::AAAA(AAAA(ip))))
                }
                _ => None,
            };
            Some(record.into_iter().collect())
        }
        [port, protocol, service] => {
            let found = services.iter().find(|s| s.name.as_str() == *service)?;
            let port_name = port.strip_prefix('_')?;
            let protocol = match *protocol {
                "_tcp" => Protocol::Tcp,
                "_udp" => Protocol::Udp,
                _ => return None,
            };
            let port = found.ports.iter().find(|p| p.name == port_name && p.protocol == protocol)?;
            if query.query_type() != RecordType::SRV {
                return Some(Vec::new());
            }
            let target = Name::from_ascii(format!("{service}.{DOMAIN}.")).ok()?;
            Some(vec![Record::from_rdata(owner, TTL, RData::SRV(SRV::new(0, 0, port.port, target)))])
        }
        _ => None,
    }
}

/// An empty answer with `code`, for a question we cannot serve.
fn failure(question: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let message = Message::from_vec(question).ok()?;
    let mut reply = Message::error_msg(message.metadata.id, message.metadata.op_code, code);
    reply.add_queries(message.queries.iter().cloned());
    reply.to_vec().ok()
}

async fn forward(question: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let socket = super::udp::connect(upstream).await.ok()?;
    socket.send(question).await.ok()?;
    let mut buffer = vec![0u8; 65_535];
    let len = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buffer)).await.ok()?.ok()?;
    buffer.truncate(len);
    Some(buffer)
}

/// The host's first resolver, from `/etc/resolv.conf`.
pub fn host_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .find_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Service {
        crate::mesh::web_service(20005, Vec::new())
    }

    fn ask(name: &str, kind: RecordType) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 7;
        message.add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
        message.to_vec().expect("encode")
    }

    fn reply(answer: Answer) -> Message {
        match answer {
            Answer::Reply(bytes) => Message::from_vec(&bytes).expect("decode"),
            other => panic!("no reply: {other:?}"),
        }
    }

    #[test]
    fn answers_a_and_srv_for_services_and_nxdomain_for_others() {
        let mesh: IpAddr = [172, 20, 0, 1].into();
        let services = [web()];
        let cases: [(&str, RecordType, ResponseCode, Option<RData>); 6] = [
            (
                "web.flotilla.",
                RecordType::A,
                ResponseCode::NoError,
                Some(RData::A(A([172, 20, 0, 1].into()))),
            ),
            ("WEB.Flotilla", RecordType::A, ResponseCode::NoError, Some(RData::A(A([172, 20, 0, 1].into())))),
            (
                "_http._tcp.web.flotilla.",
                RecordType::SRV,
                ResponseCode::NoError,
                Some(RData::SRV(SRV::new(0, 0, 20005, Name::from_ascii("web.flotilla.").expect("name")))),
            ),
            ("web.flotilla.", RecordType::AAAA, ResponseCode::NoError, None),
            ("api.flotilla.", RecordType::A, ResponseCode::NXDomain, None),
            ("_http._udp.web.flotilla.", RecordType::SRV, ResponseCode::NXDomain, None),
        ];
        for (name, kind, code, rdata) in cases {
            let message = reply(answer(&ask(name, kind), mesh, &services));
            assert_eq!(message.metadata.id, 7, "{name}");
            assert_eq!(message.metadata.response_code, code, "{name}");
            let answers: Vec<RData> = message.answers.iter().map(|r| r.data.clone()).collect();
            assert_eq!(answers, rdata.into_iter().collect::<Vec<_>>(), "{name}");
        }
    }

    #[test]
    fn other_names_go_to_the_host_resolver_and_garbage_is_dropped() {
        assert_eq!(
            answer(&ask("example.org.", RecordType::A), [10, 0, 0, 1].into(), &[web()]),
            Answer::Forward
        );
        assert_eq!(answer(b"\x01\x02", [10, 0, 0, 1].into(), &[web()]), Answer::Drop);
    }
}
