// The fork handler behind svdq/blas.h.
#include <pthread.h>

#include <condition_variable>
#include <mutex>
#include <new>

#include "svdq/blas.h"

namespace svdq {

namespace {

std::mutex gMutex;
std::condition_variable gChanged;
int gCallsInFlight = 0;  // BLAS calls running now (outermost scopes only)
int gForksPending = 0;   // threads between their fork's prepare and parent handlers
thread_local int tDepth = 0;

void beforeFork() {
  std::unique_lock lock(gMutex);
  ++gForksPending;
  gChanged.wait(lock, [] { return gCallsInFlight == 0; });
}

void afterForkInParent() {
  {
    const std::lock_guard lock(gMutex);
    --gForksPending;
  }
  gChanged.notify_all();
}

// The child has only the forking thread: start from a clean state (another thread may have held the
// mutex at the moment of the fork).
void afterForkInChild() {
  new (&gMutex) std::mutex;
  new (&gChanged) std::condition_variable;
  gCallsInFlight = 0;
  gForksPending = 0;
  tDepth = 0;
}

// Registered when the addon loads, after OpenBLAS (a dependency, so initialised first) registered its
// own handler; prepare handlers run in reverse order of registration, so ours runs first.
[[maybe_unused]] const int gRegistered = pthread_atfork(beforeFork, afterForkInParent, afterForkInChild);

}  // namespace

BlasCallScope::BlasCallScope() {
  if (tDepth++ > 0) return;
  std::unique_lock lock(gMutex);
  gChanged.wait(lock, [] { return gForksPending == 0; });
  ++gCallsInFlight;
}

BlasCallScope::~BlasCallScope() {
  if (--tDepth > 0) return;
  {
    const std::lock_guard lock(gMutex);
    --gCallsInFlight;
  }
  gChanged.notify_all();
}

}  // namespace svdq
