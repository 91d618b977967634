//! rollgate's fuzzing, on the stable toolchain: structure-aware generators ([`gen`]), byte
//! mutation ([`mutate`]), the targets and their properties ([`targets`], [`http`], [`api`]) and the loop
//! that runs them ([`runner`]). `make test` runs every target briefly (fuzz/tests), `make fuzz`
//! longer; the README's "Fuzzing" section says how to reproduce a failure and grow the corpus.

pub mod api;
pub mod gen;
pub mod http;
pub mod mutate;
pub mod pending;
pub mod rls;
pub mod runner;
pub mod targets;
