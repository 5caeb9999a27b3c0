//! Integration tests: the real guest component on the real host with real
//! GGUF models. One binary, one module per topic.

mod chat;
mod cohere;
mod conversation;
mod device;
mod download;
mod errors;
mod fuzz;
mod guest_cache;
mod hostile;
mod phone;
mod prefix;
mod quality;
mod quantize;
mod sandbox;
mod tokenize;
