mod concurrency;
mod dev;
mod helpers;
mod hostile;
mod intake;
mod outage;
mod queue;
mod vectors;
