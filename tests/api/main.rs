mod helpers;
mod intake;
mod vectors;
