//! The voice agent: STT → LLM → sentence chunker → TTS, streaming sentence by
//! sentence. (Wired in by the embedded-stack work.)
