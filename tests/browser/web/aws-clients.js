// The AWS SDK for JavaScript v3 clients the browser tests use, bundled by esbuild into
// build/aws-clients.js as the global `AwsKvs`.
export * as KinesisVideo from "@aws-sdk/client-kinesis-video";
export * as Signaling from "@aws-sdk/client-kinesis-video-signaling";
export * as WebRtcStorage from "@aws-sdk/client-kinesis-video-webrtc-storage";
export * as ArchivedMedia from "@aws-sdk/client-kinesis-video-archived-media";
