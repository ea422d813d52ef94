//! The front of every client connection: KV's unary calls straight to their
//! handlers, everything else through tonic's router.
//!
//! tonic's router costs more than the KV handlers themselves on a small put:
//! path parameters stored in request extensions, the bodies boxed three
//! times, a decoder stream and an encoder stream per call, the trailers built
//! from a `Status`: about 20 allocations per call (`docs/server.md`, "The KV
//! front"). A KV call here takes the request body (one DATA frame from every
//! client we know), decodes the one message, runs the same handler a tonic
//! call runs, and answers with the same frames tonic sends: HEADERS
//! (`content-type: application/grpc`), DATA, HEADERS (`grpc-status: 0`), or
//! a trailers-only answer for an error (tonic's own `Status::into_http`).
//!
//! A body with less than one message gets grpc-go's answer (`Unknown`,
//! "EOF" or "unexpected EOF"), as from etcd. Anything else unusual goes to
//! tonic with the bytes already read put back in front of the rest of the
//! body, so it answers exactly as it always did: a learner member, a
//! compressed message, a message over the decode limit, more than one
//! message, trailers from the client, a body that fails, a message that
//! does not decode.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method as HttpMethod, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message;
use tonic::codegen::Service;
use tonic::service::Routes;
use tonic::Status;

use super::remote::Remote;
use super::LearnerGuard;
use crate::etcd_server::{wants_leader, EtcdServer};
use crate::pb::etcdserverpb as pb;

/// Where KV calls run: on this executor (the raft core), or forwarded to
/// the raft core from a client executor.
#[derive(Clone)]
pub enum KvCalls {
    Local(Rc<EtcdServer>),
    Remote(Remote),
}

/// The service hyper runs for each client connection: a hyper service
/// (called by reference), so a call costs one reference count, not a clone
/// of the router.
#[derive(Clone)]
pub struct Front(Rc<Parts>);

pub struct Parts {
    pub kv: KvCalls,
    pub routes: LearnerGuard,
    /// The largest KV message decoded here; larger ones go to tonic, whose
    /// limit is the same.
    pub decode_limit: usize,
}

impl Front {
    /// The front of `kv`, with `routes` behind it for everything else and
    /// etcd's learner check (`learner`) in front of those.
    pub fn new(kv: KvCalls, routes: Routes, learner: Arc<AtomicBool>, max_request_bytes: u32) -> Front {
        Front(Rc::new(Parts {
            kv,
            routes: LearnerGuard { routes, learner },
            decode_limit: super::kv_decode_limit(max_request_bytes),
        }))
    }
}

fn kv_call(req: &Request<Incoming>) -> Option<Method> {
    if req.method() != HttpMethod::POST {
        return None;
    }
    method(req.uri().path())
}

type Answer = Result<Response<Out>, Infallible>;

impl hyper::service::Service<Request<Incoming>> for Front {
    type Response = Response<Out>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Answer>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        match kv_call(&req) {
            Some(call) => Box::pin(kv(self.0.clone(), call, req)),
            None => Box::pin(via_tonic(self.0.routes.clone(), req)),
        }
    }
}

async fn via_tonic<B>(mut routes: LearnerGuard, req: Request<B>) -> Answer
where
    LearnerGuard: Service<Request<B>, Response = Response<tonic::body::Body>, Error = Infallible>,
{
    Ok(routes.call(req).await?.map(Out::Tonic))
}

/// What may be compressed: tonic answers a request that names an encoding
/// other than `identity` itself.
fn compressed(headers: &HeaderMap) -> bool {
    headers.get("grpc-encoding").is_some_and(|v| v != "identity")
}

async fn kv(front: Rc<Parts>, method: Method, req: Request<Incoming>) -> Answer {
    if front.routes.learner.load(Ordering::Relaxed) || compressed(req.headers()) {
        return via_tonic(front.routes.clone(), req).await;
    }
    let (parts, mut body) = req.into_parts();
    let limit = front.decode_limit.saturating_add(5);
    let mut read = Read::None;
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return replay(&front, parts, read.take(), Some(Err(e)), body).await,
        };
        match frame.into_data() {
            Ok(data) => {
                read.push(data);
                if read.len() > limit {
                    return replay(&front, parts, read.take(), None, body).await;
                }
            }
            Err(frame) => return replay(&front, parts, read.take(), Some(Ok(frame)), body).await,
        }
    }
    let bytes = read.take().unwrap_or_default();
    let call = match one_message(&bytes, front.decode_limit) {
        Whole::One(msg) => decode(method, msg),
        Whole::Short(status) => return Ok(status.into_http()),
        Whole::Other => None,
    };
    match call {
        Some(call) => Ok(front.kv.run(wants_leader(&parts.headers), call).await),
        None => replay(&front, parts, Some(bytes), None, body).await,
    }
}

/// Hands the call to tonic, with what the front already read put back in
/// front of the rest of the body.
async fn replay(
    front: &Parts,
    parts: http::request::Parts,
    head: Option<Bytes>,
    held: Option<Result<Frame<Bytes>, hyper::Error>>,
    rest: Incoming,
) -> Answer {
    via_tonic(front.routes.clone(), Request::from_parts(parts, Replay { head, held, rest })).await
}

/// What a whole request body holds.
enum Whole {
    /// Exactly one uncompressed message, within the decode limit. A slice
    /// of the body, not a copy: prost then copies each `bytes` field once,
    /// where from a `&[u8]` it copies it twice.
    One(Bytes),
    /// Less than one message: grpc-go's answer (tonic's differs).
    Short(Status),
    /// Anything else, for tonic.
    Other,
}

fn one_message(bytes: &Bytes, limit: usize) -> Whole {
    if bytes.is_empty() {
        return Whole::Short(Status::unknown("EOF"));
    }
    let Some(prefix) = bytes.get(..5) else {
        return Whole::Short(Status::unknown("unexpected EOF"));
    };
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if prefix[0] != 0 || len > limit {
        return Whole::Other;
    }
    match (bytes.len() - 5).cmp(&len) {
        std::cmp::Ordering::Less => Whole::Short(Status::unknown("unexpected EOF")),
        std::cmp::Ordering::Equal => Whole::One(bytes.slice(5..)),
        std::cmp::Ordering::Greater => Whole::Other,
    }
}

fn answer<M: Message>(res: Result<M, Status>) -> Response<Out> {
    let msg = match res {
        Ok(msg) => msg,
        Err(status) => return status.into_http(),
    };
    let len = msg.encoded_len();
    let Ok(len32) = u32::try_from(len) else {
        return Status::resource_exhausted(format!("response of {len} bytes is over gRPC's 4 GiB")).into_http();
    };
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len32);
    // Cannot fail: the buffer has room for the whole message.
    let _ = msg.encode(&mut buf);
    let mut resp = Response::new(Out::Unary { data: Some(buf.freeze()), trailers: true });
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    resp
}

/// The body read so far, kept without a copy while it is one DATA frame.
enum Read {
    None,
    One(Bytes),
    Many(BytesMut),
}

impl Read {
    fn push(&mut self, data: Bytes) {
        *self = match std::mem::replace(self, Read::None) {
            Read::None => Read::One(data),
            Read::One(first) => {
                let mut all = BytesMut::with_capacity(first.len() + data.len());
                all.extend_from_slice(&first);
                all.extend_from_slice(&data);
                Read::Many(all)
            }
            Read::Many(mut all) => {
                all.extend_from_slice(&data);
                Read::Many(all)
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Read::None => 0,
            Read::One(b) => b.len(),
            Read::Many(b) => b.len(),
        }
    }

    fn take(&mut self) -> Option<Bytes> {
        match std::mem::replace(self, Read::None) {
            Read::None => None,
            Read::One(b) => Some(b),
            Read::Many(b) => Some(b.freeze()),
        }
    }
}

/// A request body for tonic: what the front already read, then the rest.
pub struct Replay {
    head: Option<Bytes>,
    held: Option<Result<Frame<Bytes>, hyper::Error>>,
    rest: Incoming,
}

impl Body for Replay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if let Some(held) = self.held.take() {
            return Poll::Ready(Some(held));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.held.is_none() && self.rest.is_end_stream()
    }
}

/// A response body: a KV answer (one message, then `grpc-status: 0`), or
/// tonic's.
pub enum Out {
    Unary { data: Option<Bytes>, trailers: bool },
    /// Trailers-only answers (errors): everything is in the headers.
    Empty,
    Tonic(tonic::body::Body),
}

impl Default for Out {
    fn default() -> Self {
        Out::Empty
    }
}

impl Body for Out {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self.get_mut() {
            Out::Unary { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if std::mem::take(trailers) {
                    let mut map = HeaderMap::with_capacity(1);
                    map.insert(Status::GRPC_STATUS, HeaderValue::from_static("0"));
                    return Poll::Ready(Some(Ok(Frame::trailers(map))));
                }
                Poll::Ready(None)
            }
            Out::Empty => Poll::Ready(None),
            Out::Tonic(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Out::Unary { data, trailers } => data.is_none() && !trailers,
            Out::Empty => true,
            Out::Tonic(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            // Like tonic's: no length announced for gRPC answers.
            Out::Unary { .. } => SizeHint::default(),
            Out::Empty => SizeHint::with_exact(0),
            Out::Tonic(body) => body.size_hint(),
        }
    }
}

/// KV's unary calls, from the one list in `with_kv_calls!`: which call a
/// path names, its decoded request, and the handler that runs it, on the
/// raft core or forwarded to it.
macro_rules! kv_calls {
    ($($call:ident, $path:literal, $method:ident, $remote:ident($req:ty) -> $resp:ty;)*) => {
        #[derive(Clone, Copy)]
        enum Method {
            $($call,)*
        }

        fn method(path: &str) -> Option<Method> {
            match path {
                $($path => Some(Method::$call),)*
                _ => None,
            }
        }

        enum Call {
            $($call($req),)*
        }

        /// The call's request; `None` when it does not decode (tonic then
        /// answers with its own decode error).
        fn decode(method: Method, msg: Bytes) -> Option<Call> {
            match method {
                $(Method::$call => <$req>::decode(msg).ok().map(Call::$call),)*
            }
        }

        impl KvCalls {
            async fn run(&self, wants: bool, call: Call) -> Response<Out> {
                match call {
                    $(Call::$call(r) => answer(match self {
                        KvCalls::Local(srv) => srv.$method(wants, r).await,
                        KvCalls::Remote(remote) => remote.$remote(wants, r).await,
                    }),)*
                }
            }
        }
    };
}

with_kv_calls!(kv_calls);
