mod concurrency;
mod helpers;
mod hostile;
mod intake;
mod outage;
mod vectors;
