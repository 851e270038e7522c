export {
  STREAM_MAGIC, WIRE_VERSION_MAJOR, WIRE_VERSION_MINOR, STREAM_HEADER_SIZE, RECORD_SYNC, RECORD_HEADER_SIZE, NO_DEVICE,
  Features, RecordFlags, RecordType, recordTypeName, ROUND_FLAG_EMPTY, ROUND_FLAG_FINAL, MAX_DEVICES,
  encodeStreamHeader, decodeStreamHeader, encodeRecordHeader, decodeRecordHeader, writeRecordHeader, encodeRecord,
  createDataDigest, digestAvailable, crc32Combine,
} from './wire-format.js';
export type {
  WireDevice, StreamHeader, StreamHeaderInit, DataDigest, RecordHeader, WireRecord, DecodedObject, StreamHeaderRecord,
  DataRecord, RoundRecord, DeviceEndRecord, ControlRecord, StreamEndRecord,
  RecordInput, DataInput, RoundInput, DeviceEndInput, ControlInput, StreamEndInput, RawInput,
} from './wire-format.js';
export { crc32, crc32Accelerated } from './crc32.js';
export { RecordEncoder, createRecordEncoder } from './record-encoder.js';
export type { RecordEncoderOptions, EncoderCompressionOptions } from './record-encoder.js';
export { RecordDecoder, createRecordDecoder } from './record-decoder.js';
export type { RecordDecoderOptions } from './record-decoder.js';
export { CompressionPool, sharedCompressionPool, configureSharedCompressionPool, defaultPoolSize, DEFAULT_MAX_POOL_SIZE, validateZstdLevel, DEFAULT_ZSTD_LEVEL, MIN_ZSTD_LEVEL, MAX_ZSTD_LEVEL, DEFAULT_MIN_SAVING, validateMinSaving } from './compression-pool.js';
export type { CompressionPoolOptions, CompressOptions, CompressResult, CompressionWork } from './compression-pool.js';
export { PrecopyEstimator, RateWindow, FIXED_COST_KINDS, stopCopyReadBytes, MIN_STOP_COPY_PIECE, MAX_STOP_COPY_SPLIT_ROUNDS } from './estimator.js';
export type { PrecopyEstimatorOptions, Prediction, EstimatorSnapshot, FixedCostKind, QueryFailedEvent, ReinitEvent, InitialSentEvent, PrecopyEstimatorEvents } from './estimator.js';
export { SavingStream, createSavingStream } from './saving-stream.js';
export type { SavingStreamOptions, PrecopyEmptyEvent, PrecopyDataEvent } from './saving-stream.js';
export { ResumingStream, createResumingStream } from './resuming-stream.js';
export type { ResumingStreamOptions } from './resuming-stream.js';
export { FdSource, createFdSource } from './fd-source.js';
export type { FdSourceOptions } from './fd-source.js';
export { FdSink, createFdSink } from './fd-sink.js';
export type { FdSinkOptions } from './fd-sink.js';
export { fdKind } from './fd-kind.js';
export { DEFAULT_CHUNK_SIZE } from './chunk-source.js';
export { ChunkLoans } from './chunk-loans.js';
export { chunksOf } from './chunks.js';
export type { ChunkSourceOptions } from './chunk-source.js';
export type { ChunkSinkOptions } from './chunk-sink.js';
export { READ_TARGET, readTargetHook, ReadTargets, FIRST_READ_BYTES, INPUT_RELEASE, inputReleaseHook } from './read-target.js';
export type { ReadTargetProvider, ReadTargetHook, InputReleaseHook } from './read-target.js';
export { sendBufferSize, pipeCapacity, PIPE_CAPACITY } from './fd-tuning.js';
export { MALLOC_TUNING_ENV, mallocTuning, withMallocTuning, tuneMalloc } from './malloc-tuning.js';
export type { MallocTuning } from './malloc-tuning.js';
