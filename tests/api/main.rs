mod helpers;
mod vectors;
