"""GPU tests of paddle_gqa: the CPU grid on CUDA through the DLPack module and the Paddle GPU ops."""
