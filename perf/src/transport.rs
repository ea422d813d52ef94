//! How the load tool's connections are built under `etcd-client`.
//!
//! Every request still goes through `etcd-client`'s typed clients (`KvClient`,
//! `LeaseClient`, `WatchClient`, ...), its interceptor and tonic's gRPC codec;
//! only the channel underneath differs. `etcd-client` 0.21 accepts a channel
//! built by the caller (feature `raw-channel`, [`Client::from_channel`]).
//!
//! - [`Transport::H2`] (the default): one HTTP/2 connection driven by the
//!   `h2` crate directly (the HTTP/2 implementation hyper and tonic use
//!   underneath). A request is written by the calling task itself and its
//!   response is read by it: no `tower::buffer` worker hop, no balancer, and
//!   none of the task hyper spawns per request to wait for the response
//!   (plus, most of the time, one more to send the body). The HTTP/2
//!   settings are hyper's client defaults (tonic's), so servers see the same
//!   connection preface and flow-control windows. A unary request's message
//!   goes out as one DATA frame with END_STREAM, as grpc-go (etcd's own
//!   `benchmark`) sends it, instead of a DATA frame and an empty END_STREAM
//!   one.
//! - [`Transport::Tonic`]: a plain tonic `Channel` per connection (tonic's
//!   connection stack with its `Buffer`, no balancer).
//! - [`Transport::Balanced`]: `Client::connect`, as `etcd-client` builds it
//!   itself (a balanced channel over one endpoint: `Buffer` + `Balance` +
//!   tonic's connection `Buffer` ... + hyper).
//! - [`Transport::Hyper`]: hyper's HTTP/2 `SendRequest` as the channel (no
//!   `Buffer`, no balancer; hyper's per-request tasks stay).
//!
//! Neither the h2 nor the hyper channel re-dials a connection the server
//! closed: its requests then fail and are counted as errors.

use bytes::Bytes;
use etcd_client::{Channel, Client, ConnectOptions};
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body as _, Frame};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::util::BoxCloneSyncService;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type GrpcBody = tonic::body::Body;

/// hyper's HTTP/2 client defaults (what tonic's `Endpoint` uses unless told otherwise).
const STREAM_WINDOW: u32 = 2 << 20;
const CONN_WINDOW: u32 = 5 << 20;
const MAX_FRAME: u32 = 16 << 10;
const MAX_HEADER_LIST: u32 = 16 << 10;
const MAX_SEND_BUF: usize = 1 << 20;
const INITIAL_MAX_SEND_STREAMS: usize = 100;

const USER_AGENT: &str = concat!("ironcd-bench/", env!("CARGO_PKG_VERSION"), " etcd-client/0.21");

/// Which channel an `etcd-client` `Client` is built on (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Transport {
    #[default]
    H2,
    Tonic,
    Balanced,
    Hyper,
}

/// Opens one connection to `url` and builds a `Client` on it.
pub async fn client(url: &str, t: Transport, dial_timeout: Duration, opts: ConnectOptions) -> Result<Client, BoxError> {
    match t {
        Transport::Balanced => Ok(Client::connect([url], Some(opts)).await?),
        Transport::Tonic => {
            let ep = tonic::transport::Endpoint::from_shared(url.to_string())?.connect_timeout(dial_timeout);
            let ch = ep.connect().await?;
            Ok(Client::from_channel(Channel::Tonic(ch), Some(opts)).await?)
        }
        Transport::Hyper => {
            let (tcp, origin) = dial(url, dial_timeout).await?;
            let mut b = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
            b.timer(hyper_util::rt::TokioTimer::new());
            let (send, conn) = b.handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let svc = HyperChannel { send, origin };
            Ok(Client::from_channel(Channel::Custom(BoxCloneSyncService::new(svc)), Some(opts)).await?)
        }
        Transport::H2 => {
            let (tcp, origin) = dial(url, dial_timeout).await?;
            let svc = h2_channel(Unvectored(tcp), origin).await?;
            Ok(Client::from_channel(Channel::Custom(BoxCloneSyncService::new(svc)), Some(opts)).await?)
        }
    }
}

/// The HTTP/2 handshake over `io` (hyper's client settings); the connection
/// is driven by a task of its own.
async fn h2_channel<T>(io: T, origin: Origin) -> Result<H2Channel, BoxError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUF)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(H2Channel { send, origin })
}

/// Scheme and authority put on every request (tonic's `AddOrigin`), and the user agent.
#[derive(Clone)]
struct Origin {
    scheme: Scheme,
    authority: Authority,
    user_agent: HeaderValue,
}

impl Origin {
    fn apply(&self, head: &mut http::request::Parts) -> Result<(), BoxError> {
        let mut parts = std::mem::take(&mut head.uri).into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        head.uri = Uri::from_parts(parts)?;
        head.headers.entry(http::header::USER_AGENT).or_insert_with(|| self.user_agent.clone());
        Ok(())
    }
}

/// TCP connection (no Nagle, as tonic) to an `http://host:port` URL.
async fn dial(url: &str, timeout: Duration) -> Result<(tokio::net::TcpStream, Origin), BoxError> {
    let uri: Uri = url.parse()?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(format!("{url}: only http:// endpoints are supported").into());
    }
    let authority = uri.authority().ok_or_else(|| format!("{url}: no host"))?.clone();
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
    let port = authority.port_u16().unwrap_or(80);
    let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port))).await {
        Ok(r) => r?,
        Err(_) => return Err(format!("{url}: dial timed out after {timeout:?}").into()),
    };
    tcp.set_nodelay(true)?;
    Ok((tcp, Origin { scheme: Scheme::HTTP, authority, user_agent: HeaderValue::from_static(USER_AGENT) }))
}

// ---- h2 ----------------------------------------------------------------------

/// A gRPC channel over one `h2` connection (cheap to clone: one per client).
#[derive(Clone)]
struct H2Channel {
    send: h2::client::SendRequest<Bytes>,
    origin: Origin,
}

impl Service<Request<GrpcBody>> for H2Channel {
    type Response = Response<GrpcBody>;
    type Error = BoxError;
    type Future = H2Call;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.send.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<GrpcBody>) -> H2Call {
        let (mut head, body) = req.into_parts();
        if let Err(e) = self.origin.apply(&mut head) {
            return H2Call::Failed(Some(e));
        }
        match self.send.send_request(Request::from_parts(head, ()), false) {
            Ok((response, stream)) => H2Call::Sent { pump: Some(Pump { body, stream, held: None }), response },
            Err(e) => H2Call::Failed(Some(e.into())),
        }
    }
}

/// One call on an [`H2Channel`]: the request body is sent on the first poll,
/// by the caller's task (a unary request's body is complete at once); a
/// streaming body (watch, lease keep-alive) that has to wait is handed to a
/// task of its own. Then the response head is awaited.
enum H2Call {
    Failed(Option<BoxError>),
    Sent { pump: Option<Pump>, response: h2::client::ResponseFuture },
}

impl Future for H2Call {
    type Output = Result<Response<GrpcBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            H2Call::Failed(e) => Poll::Ready(Err(e.take().expect("H2Call polled after completion"))),
            H2Call::Sent { pump, response } => {
                if let Some(p) = pump.as_mut() {
                    match Pin::new(p).poll(cx) {
                        Poll::Ready(Ok(())) => *pump = None,
                        Poll::Ready(Err(e)) => {
                            *pump = None;
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => {
                            tokio::spawn(pump.take().expect("checked"));
                        }
                    }
                }
                let (parts, recv) = match Pin::new(response).poll(cx) {
                    Poll::Ready(Ok(r)) => r.into_parts(),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => return Poll::Pending,
                };
                Poll::Ready(Ok(Response::from_parts(parts, GrpcBody::new(RecvBody { recv, data_done: false }))))
            }
        }
    }
}

/// Sends a request body on an h2 stream. A data chunk is held until the next
/// poll of the body tells whether it is the last one, so a unary message and
/// END_STREAM go in one DATA frame; when the body has to wait, the held chunk
/// is sent at once.
struct Pump {
    body: GrpcBody,
    stream: h2::SendStream<Bytes>,
    held: Option<Bytes>,
}

impl Future for Pump {
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = &mut *self;
        loop {
            match Pin::new(&mut me.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(prev) = me.held.replace(data) {
                            me.stream.send_data(prev, false)?;
                        }
                    }
                    Err(frame) => {
                        if let Some(prev) = me.held.take() {
                            me.stream.send_data(prev, false)?;
                        }
                        if let Ok(trailers) = frame.into_trailers() {
                            me.stream.send_trailers(trailers)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    me.stream.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(Err(e.into()));
                }
                Poll::Ready(None) => {
                    let last = me.held.take().unwrap_or_default();
                    return Poll::Ready(me.stream.send_data(last, true).map_err(Into::into));
                }
                Poll::Pending => {
                    if let Some(prev) = me.held.take() {
                        me.stream.send_data(prev, false)?;
                    }
                    // A reset by the peer ends the pump (the response reports it).
                    if let Poll::Ready(r) = me.stream.poll_reset(cx) {
                        return Poll::Ready(r.map(|_| ()).map_err(Into::into));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// A response body read from an h2 stream: data frames (their flow-control
/// capacity released as they arrive, as hyper does), then the trailers.
struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let me = &mut *self;
        if !me.data_done {
            match me.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let _ = me.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => me.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match me.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

/// The TCP stream, reported to h2 as not supporting vectored writes. h2
/// copies a DATA payload of up to 1,024 bytes into its 16 KiB write buffer
/// then (256 bytes with vectored writes, above which it chains the payload and
/// must write before it can buffer the next frame): with 256-byte values that
/// was one `writev` per request; this way the requests that are ready go out
/// in one write. The frames are the same.
struct Unvectored(tokio::net::TcpStream);

impl tokio::io::AsyncRead for Unvectored {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Unvectored {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

// ---- hyper (for comparison) ----------------------------------------------------

#[derive(Clone)]
struct HyperChannel {
    send: hyper::client::conn::http2::SendRequest<GrpcBody>,
    origin: Origin,
}

impl Service<Request<GrpcBody>> for HyperChannel {
    type Response = Response<GrpcBody>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<GrpcBody>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.send.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<GrpcBody>) -> Self::Future {
        let (mut head, body) = req.into_parts();
        if let Err(e) = self.origin.apply(&mut head) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let fut = self.send.send_request(Request::from_parts(head, body));
        Box::pin(async move { Ok(fut.await?.map(GrpcBody::new)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::Error as EtcdError;

    fn origin() -> Origin {
        Origin { scheme: Scheme::HTTP, authority: "test:1".parse().unwrap(), user_agent: HeaderValue::from_static(USER_AGENT) }
    }

    /// An h2 server on one end of an in-memory pipe, answering each request with `handler`.
    async fn serve<F, Fut>(io: tokio::io::DuplexStream, handler: F)
    where
        F: Fn(Request<h2::RecvStream>, h2::server::SendResponse<Bytes>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut conn = h2::server::handshake(io).await.expect("server handshake");
        while let Some(r) = conn.accept().await {
            let (req, respond) = r.expect("accept");
            tokio::spawn(handler(req, respond));
        }
    }

    async fn grpc_reply(mut respond: h2::server::SendResponse<Bytes>, status: &str, message: &[u8]) {
        let head = Response::builder().status(200).header("content-type", "application/grpc").body(()).unwrap();
        let mut s = respond.send_response(head, false).unwrap();
        if status == "0" {
            let mut m = vec![0u8, 0, 0, 0, message.len() as u8];
            m.extend_from_slice(message);
            s.send_data(Bytes::from(m), false).unwrap();
        }
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", status.parse().unwrap());
        t.insert("grpc-message", "no such thing".parse().unwrap());
        s.send_trailers(t).unwrap();
    }

    #[tokio::test]
    async fn unary_put_is_one_data_frame_with_end_stream_and_its_answer_is_read() {
        let (a, b) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve(b, |req, respond| async move {
            let (head, mut body) = req.into_parts();
            assert_eq!(head.method, http::Method::POST);
            assert_eq!(head.uri.path(), "/etcdserverpb.KV/Put");
            assert_eq!(head.uri.authority().map(|a| a.as_str()), Some("test:1"));
            assert_eq!(head.headers["content-type"], "application/grpc");
            assert_eq!(head.headers["te"], "trailers");
            assert!(head.headers.contains_key("user-agent"));
            let chunk = body.data().await.expect("a data frame").expect("data");
            // The message and END_STREAM in one DATA frame.
            assert!(body.is_end_stream());
            assert_eq!(chunk[0], 0);
            assert_eq!(u32::from_be_bytes(chunk[1..5].try_into().unwrap()) as usize, chunk.len() - 5);
            assert!(chunk.windows(3).any(|w| w == b"key"));
            assert!(chunk.windows(5).any(|w| w == b"value"));
            let _ = body.flow_control().release_capacity(chunk.len());
            // PutResponse { header: { revision: 7 } }
            grpc_reply(respond, "0", &[0x0a, 0x02, 0x18, 0x07]).await;
        }));
        let ch = h2_channel(a, origin()).await.unwrap();
        let client = Client::from_channel(Channel::Custom(BoxCloneSyncService::new(ch)), None).await.unwrap();
        let mut kv = client.kv_client();
        for _ in 0..3 {
            let r = kv.put("key", "value", None).await.expect("put");
            assert_eq!(r.header().map(|h| h.revision()), Some(7));
        }
    }

    #[tokio::test]
    async fn a_grpc_error_status_is_the_callers_error() {
        let (a, b) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve(b, |_req, respond| grpc_reply(respond, "5", b"")));
        let ch = h2_channel(a, origin()).await.unwrap();
        let client = Client::from_channel(Channel::Custom(BoxCloneSyncService::new(ch)), None).await.unwrap();
        match client.kv_client().get("k", None).await {
            Err(EtcdError::GRpcStatus(s)) => {
                assert_eq!(s.code(), tonic::Code::NotFound);
                assert_eq!(s.message(), "no such thing");
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("expected an error"),
        }
    }

    /// A request body fed from a channel (as a watch stream's requests are).
    struct Fed(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

    impl http_body::Body for Fed {
        type Data = Bytes;
        type Error = tonic::Status;
        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn a_streaming_body_keeps_flowing_after_the_response_head() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<(Bytes, bool)>();
        tokio::spawn(serve(b, move |req, mut respond| {
            let got_tx = got_tx.clone();
            async move {
                let mut body = req.into_body();
                let head = Response::builder().status(200).header("content-type", "application/grpc").body(()).unwrap();
                let _s = respond.send_response(head, false).unwrap();
                while let Some(d) = body.data().await {
                    let d = d.unwrap();
                    let _ = body.flow_control().release_capacity(d.len());
                    got_tx.send((d, body.is_end_stream())).unwrap();
                }
                got_tx.send((Bytes::new(), true)).unwrap();
            }
        }));
        let mut ch = h2_channel(a, origin()).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(Bytes::from_static(b"one")).unwrap();
        std::future::poll_fn(|cx| ch.poll_ready(cx)).await.unwrap();
        let req = Request::builder().method("POST").uri("/etcdserverpb.Watch/Watch").body(GrpcBody::new(Fed(rx))).unwrap();
        let resp = ch.call(req).await.expect("response head while the body is still open");
        assert_eq!(resp.status(), 200);
        assert_eq!(got_rx.recv().await.unwrap(), (Bytes::from_static(b"one"), false));
        tx.send(Bytes::from_static(b"two")).unwrap();
        assert_eq!(got_rx.recv().await.unwrap(), (Bytes::from_static(b"two"), false));
        drop(tx);
        let (last, eos) = got_rx.recv().await.unwrap();
        assert!(eos && last.is_empty());
    }
}
