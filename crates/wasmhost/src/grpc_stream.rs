//! gRPC streams (`proxy_grpc_stream`, `proxy_grpc_send`, `proxy_grpc_close`,
//! `proxy_grpc_cancel`) as Envoy 1.40 runs them (`Context::grpcStream`, `grpcSend`,
//! `grpcClose`, `grpcCancel` and `GrpcStreamClientHandler`, in
//! source/extensions/common/wasm/context.cc and context.h):
//!
//! - a stream to a cluster Envoy does not have is refused with ParseFailure, and takes no token;
//! - tokens are 6, 10, 14, … per VM (cpp-host's `nextGrpcStreamId`: type 2, step 4; calls are
//!   5, 9, …, HTTP calls 4, 8, …), and a token of another kind is BadArgument for
//!   `proxy_grpc_send`, `proxy_grpc_close` and `proxy_grpc_cancel` (a call token still cancels
//!   its call), an unknown stream token NotFound;
//! - everything the server sends reaches the root context: `proxy_on_grpc_receive_initial_metadata`
//!   (the headers as map type 4), `proxy_on_grpc_receive` (the message as buffer type 5),
//!   `proxy_on_grpc_receive_trailing_metadata` (map type 5), then `proxy_on_grpc_close` with the
//!   status, `proxy_get_status` giving status and message;
//! - the stream stays known (`proxy_grpc_send` answers Ok and sends nothing) after the server
//!   closed it until the plugin closes its side, and a stream whose side the plugin closed stays
//!   known until the server closes it; `proxy_grpc_cancel` forgets it at once, and nothing more
//!   is delivered.
//!
//! The server is a [`GrpcStreamHandler`] a test or `rollgate try` gives per cluster
//! ([`crate::PluginConfig::grpc_stream_cluster`]): asked right after each callback in which the
//! plugin opened a stream or acted on it, with what the plugin did, and answering what the
//! server sends back by then; the host delivers that in order, as Envoy's event loop would.

use wasmtime::Caller;

use super::imports::{read, write_u32, R};
use super::maps::Headers;
use super::vm::VmState;
use super::Status;

/// Most gRPC streams one VM may have open at once; `proxy_grpc_stream` answers
/// InternalFailure beyond (Envoy has no such bound; the host's, against a runaway plugin).
pub const MAX_GRPC_STREAMS: usize = 1024;

/// Most message bytes the plugin may queue on one stream within one callback (its messages
/// reach the handler when the callback returns); `proxy_grpc_send` answers InternalFailure
/// beyond, and the host logs why (the host's bound, not Envoy's).
pub const MAX_GRPC_STREAM_QUEUED_BYTES: usize = 64 << 20;

/// A gRPC stream the plugin opened with `proxy_grpc_stream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStreamCall {
    /// The worker VM that opened it.
    pub worker: usize,
    /// The token the plugin got (per VM: 6, 10, 14, … as in Envoy 1.40).
    pub token: u32,
    /// The cluster name (the `grpc_service` argument).
    pub cluster: String,
    /// The gRPC service, e.g. `pkg.Service`.
    pub service: String,
    /// The method, e.g. `Chat`.
    pub method: String,
    /// The initial metadata the plugin passed.
    pub metadata: Headers,
}

/// What the plugin did on a stream, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcStreamSent {
    /// A message (`proxy_grpc_send`; serialized, without gRPC framing).
    Message(Vec<u8>),
    /// The plugin closed its side: `proxy_grpc_close`, or `proxy_grpc_send` with
    /// `end_of_stream`. Sent once.
    Close,
    /// The plugin reset the stream (`proxy_grpc_cancel`): the handler is asked no more, and
    /// what it answers to this is not delivered.
    Cancel,
}

/// What the server sends back on a stream, delivered in order. Anything after a
/// [`GrpcStreamReply::Close`] is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcStreamReply {
    /// The response headers (`:status` included, as Envoy's map holds them):
    /// `proxy_on_grpc_receive_initial_metadata` with their number, readable as map type 4.
    InitialMetadata(Headers),
    /// A message: `proxy_on_grpc_receive` with its size, readable as buffer type 5.
    Message(Vec<u8>),
    /// The trailers: `proxy_on_grpc_receive_trailing_metadata` with their number, readable
    /// as map type 5.
    TrailingMetadata(Headers),
    /// The end of the stream: `proxy_on_grpc_close` with `status`, and `proxy_get_status`
    /// says `status` and `message`.
    Close {
        /// The gRPC status code.
        status: u32,
        /// The status message as the filter reads it. Envoy 1.40 appends the stream's
        /// response code details to the server's `grpc-message` (`msg{via_upstream}`), and
        /// gives the details alone when the server sent none (`via_upstream`).
        message: String,
    },
}

impl GrpcStreamReply {
    /// What Envoy 1.40 delivers on a stream whose cluster's endpoint refuses the connection:
    /// empty initial metadata, empty trailing metadata, and a close with 14 UNAVAILABLE and
    /// the router's reset words (observed: crates/rollgate/tests/try_grpc_stream_like_envoy.rs;
    /// the order is `AsyncStreamImpl::onHeaders` for a trailers-only answer, in Envoy's
    /// source/common/grpc/async_client_impl.cc).
    pub fn refused() -> Vec<GrpcStreamReply> {
        vec![
            GrpcStreamReply::InitialMetadata(Headers::new()),
            GrpcStreamReply::TrailingMetadata(Headers::from_pairs([
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", "14"),
                (
                    "grpc-message",
                    "upstream connect error or disconnect/reset before headers. reset reason: \
                     remote connection failure",
                ),
            ])),
            GrpcStreamReply::Close {
                status: 14,
                message: "upstream connect error or disconnect/reset before headers. reset \
                          reason: remote connection failure{upstream_reset_before_response_started\
                          {remote_connection_failure|delayed_connect_error:_Connection_refused}}"
                    .into(),
            },
        ]
    }
}

/// The server side of one gRPC stream (see [`crate::PluginConfig::grpc_stream_cluster`]).
/// Any `FnMut(&[GrpcStreamSent]) -> Vec<GrpcStreamReply> + Send` is one.
pub trait GrpcStreamHandler: Send {
    /// Called right after the callback that opened the stream (with what the plugin did on it
    /// meanwhile, maybe nothing), then after each callback in which the plugin acted on it,
    /// until the stream closes or is cancelled; answers what the server sends back by then.
    fn exchange(&mut self, sent: &[GrpcStreamSent]) -> Vec<GrpcStreamReply>;
}

impl<F> GrpcStreamHandler for F
where
    F: FnMut(&[GrpcStreamSent]) -> Vec<GrpcStreamReply> + Send,
{
    fn exchange(&mut self, sent: &[GrpcStreamSent]) -> Vec<GrpcStreamReply> {
        self(sent)
    }
}

/// One stream the VM knows (Envoy's `grpc_stream_` entry).
pub(crate) struct OpenStream {
    pub call: GrpcStreamCall,
    /// The server side; `None` until the host first asks (right after the opening callback).
    pub handler: Option<Box<dyn GrpcStreamHandler>>,
    /// What the plugin did since the handler was last asked.
    pub outbox: Vec<GrpcStreamSent>,
    pub outbox_bytes: usize,
    /// The plugin closed its side (`proxy_grpc_close`; Envoy's `local_closed_`).
    pub local_closed: bool,
    /// A `Close` has been queued for the handler (by `proxy_grpc_close` or `end_of_stream`).
    pub close_sent: bool,
    /// The server closed the stream (`proxy_on_grpc_close` delivered; `remote_closed_`).
    pub remote_closed: bool,
}

impl OpenStream {
    /// Whether the handler has something to be asked about.
    pub(crate) fn due(&self) -> bool {
        !self.remote_closed && (self.handler.is_none() || !self.outbox.is_empty())
    }
}

/// A cancelled stream whose handler still has to hear of it.
pub(crate) struct Cancelled {
    pub call: GrpcStreamCall,
    pub handler: Option<Box<dyn GrpcStreamHandler>>,
    pub outbox: Vec<GrpcStreamSent>,
}

/// cpp-host's callout kinds: the low two bits of a token.
const GRPC_CALL: u32 = 1;
const GRPC_STREAM: u32 = 2;

pub(crate) fn grpc_stream(
    c: &mut Caller<'_, VmState>,
    (cp, cl): (i32, i32),
    (sp, sl): (i32, i32),
    (mp, ml): (i32, i32),
    (hp, hl): (i32, i32),
    token_ptr: i32,
) -> R<()> {
    let cluster = String::from_utf8_lossy(&read(c, cp, cl)?).into_owned();
    let service = String::from_utf8_lossy(&read(c, sp, sl)?).into_owned();
    let method = String::from_utf8_lossy(&read(c, mp, ml)?).into_owned();
    let metadata = Headers::deserialize(&read(c, hp, hl)?);
    let token = {
        let st = c.data_mut();
        let config = &st.plugin.config;
        // Envoy 1.40 answers ParseFailure for a cluster it does not have, before taking a
        // token (context.cc, `Context::grpcStream`). A serialized GrpcService proto is not
        // understood here.
        if !config.grpc_stream_clusters.contains_key(&cluster)
            && !config.grpc_clusters.contains_key(&cluster)
            && !config.clusters.contains_key(&cluster)
        {
            return Err(Status::ParseFailure.into());
        }
        if st.grpc_streams.len() >= MAX_GRPC_STREAMS {
            st.log_host(format!(
                "proxy_grpc_stream refused: {MAX_GRPC_STREAMS} gRPC streams already open on \
                 this VM (the host's bound)"
            ));
            return Err(Status::InternalFailure.into());
        }
        let token = st.next_grpc_stream_token;
        st.next_grpc_stream_token = st.next_grpc_stream_token.wrapping_add(4);
        let call = GrpcStreamCall {
            worker: st.worker,
            token,
            cluster,
            service,
            method,
            metadata,
        };
        st.grpc_streams.insert(
            token,
            OpenStream {
                call,
                handler: None,
                outbox: Vec::new(),
                outbox_bytes: 0,
                local_closed: false,
                close_sent: false,
                remote_closed: false,
            },
        );
        token
    };
    write_u32(c, token_ptr, token)
}

pub(crate) fn grpc_send(
    c: &mut Caller<'_, VmState>,
    token: u32,
    (mp, ml): (i32, i32),
    end_of_stream: bool,
) -> R<()> {
    // Envoy reads the message before looking at the token (cpp-host exports.cc, grpc_send).
    let message = read(c, mp, ml)?;
    if token & 3 != GRPC_STREAM {
        return Err(Status::BadArgument.into());
    }
    let st = c.data_mut();
    let s = st.grpc_streams.get_mut(&token).ok_or(Status::NotFound)?;
    if s.remote_closed || s.close_sent {
        // Envoy hands it to a stream that is over: nothing reaches the server.
        return Ok(());
    }
    if s.outbox_bytes.saturating_add(message.len()) > MAX_GRPC_STREAM_QUEUED_BYTES {
        st.log_host(format!(
            "proxy_grpc_send refused: more than {MAX_GRPC_STREAM_QUEUED_BYTES} bytes queued on \
             gRPC stream {token} within one callback (the host's bound)"
        ));
        return Err(Status::InternalFailure.into());
    }
    s.outbox_bytes += message.len();
    s.outbox.push(GrpcStreamSent::Message(message));
    if end_of_stream {
        s.outbox.push(GrpcStreamSent::Close);
        s.close_sent = true;
    }
    Ok(())
}

/// `proxy_grpc_close`: closes the plugin's side of a stream, cancels a call.
pub(crate) fn grpc_close(st: &mut VmState, token: u32) -> Status {
    match token & 3 {
        GRPC_CALL => super::imports::cancel_grpc_call(st, token),
        GRPC_STREAM => {
            let Some(s) = st.grpc_streams.get_mut(&token) else {
                return Status::NotFound;
            };
            if !s.close_sent && !s.remote_closed {
                s.outbox.push(GrpcStreamSent::Close);
                s.close_sent = true;
            }
            if s.remote_closed {
                st.grpc_streams.remove(&token);
            } else {
                s.local_closed = true;
            }
            Status::Ok
        }
        _ => Status::BadArgument,
    }
}

/// `proxy_grpc_cancel`: resets a stream (nothing more is delivered), cancels a call.
pub(crate) fn grpc_cancel(st: &mut VmState, token: u32) -> Status {
    match token & 3 {
        GRPC_CALL => super::imports::cancel_grpc_call(st, token),
        GRPC_STREAM => {
            let Some(mut s) = st.grpc_streams.remove(&token) else {
                return Status::NotFound;
            };
            if !s.remote_closed {
                s.outbox.push(GrpcStreamSent::Cancel);
                st.grpc_cancelled.push(Cancelled {
                    call: s.call,
                    handler: s.handler,
                    outbox: s.outbox,
                });
            }
            Status::Ok
        }
        _ => Status::BadArgument,
    }
}
