//! The gRPC codec of every berth service and client: prost's, with smaller first buffers.
//!
//! tonic gives each call's encoder and decoder a buffer of 8 KiB to start with, and a stream
//! keeps both for its life: an agent's stream to the leader is one, so 5,000 agents held
//! 80 MiB of the leader's memory in buffers that their heartbeats and acks (tens of bytes)
//! hardly use. Starting at 1 KiB, a buffer still grows to the largest message it carries.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Where a buffer starts.
const FIRST_BUFFER: usize = 1024;
/// How much an encoder gathers before it hands a stream's messages on (tonic's is 32 KiB). The
/// receiving end's buffers grow to the largest piece it is handed: an agent that sent a burst
/// of reports as one 32 KiB piece left the leader holding 16–32 KiB for that stream's life.
const YIELD_THRESHOLD: usize = 4 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER, YIELD_THRESHOLD)
}

/// Encodes `T` and decodes `U` with prost (`codec_path` in `build.rs`).
#[derive(Debug, Clone)]
pub struct SmallBuffers<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBuffers<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBuffers<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
