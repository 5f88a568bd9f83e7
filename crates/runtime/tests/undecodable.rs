//! Bytes that are not the message a method takes are the caller's mistake: every server
//! built on the shared stack answers INVALID_ARGUMENT for them, never INTERNAL.

#![allow(clippy::unwrap_used)]
use sentia_runtime::auth::TokenTable;
use sentia_runtime::client::connect;
use sentia_runtime::{Server, ServerConfig, Shutdown};
use tokio::net::TcpListener;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::service::Routes;
use tonic::{Code, Status};

/// Sends and receives raw protobuf bytes, so a test can send what no generated client would.
#[derive(Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn call(addr: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let channel = connect(addr, None).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check"),
        Raw,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn undecodable_requests_are_invalid_argument_and_a_valid_one_is_served() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let handle = tokio::spawn(async move {
        Server::new(ServerConfig::dev("test-server", TokenTable::default()))
            .serve(Routes::default(), listener, stop)
            .await
            .unwrap();
    });
    // HealthCheckRequest { string service = 1; }
    // An unknown group field (field 3, wire type 3: start group) opened 120 deep: past
    // prost's recursion limit of 100.
    let nested = vec![0x1b; 120];
    let cases: [(&str, Vec<u8>); 4] = [
        ("invalid UTF-8 in a string", vec![0x0a, 0x02, 0xff, 0xfe]),
        ("a truncated message", vec![0x0a, 0x10, b'a']),
        ("a wrong wire type", vec![0x0d, 1, 2, 3, 4]),
        ("nesting past the limit", nested),
    ];
    for (what, body) in cases {
        let err = call(&addr, body).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains("not a valid message"),
            "{what}: {}",
            err.message()
        );
    }
    // The same method with a well-formed body (service "") answers SERVING.
    assert_eq!(call(&addr, Vec::new()).await.unwrap(), vec![0x08, 0x01]);
    shutdown.trigger();
    handle.await.unwrap();
}
