using System.Net;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// An operation that ends by an exception nobody expected still gives its queue's lock back: the queue
/// takes the next operation instead of answering 409 until the Api restarts. The unexpected exception
/// here comes from a logging provider that throws while the runner reports that the result could not
/// be saved, past every handler of the walk's own.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class OperationLockReleaseTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string RunnerCategory = "Conveyor.Api.Operations.OperationRunner";
    private const int ResultNotSavedEvent = 2005;

    private readonly ThrowingLogs _logs = new();
    private RunningApp _app = null!;
    private HttpClient _admin = null!;
    private TestBroker _broker = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await ErrorQueueKit.ClearOperationsAsync(fixture);
        _app = await fixture.StartApiAsync(ErrorQueueKit.ApiSettings(), builder => builder.Logging.AddProvider(_logs));
        _admin = ErrorQueueKit.Client(_app.BaseAddress);
        _broker = await TestBroker.ConnectAsync(fixture);
    }

    public async Task DisposeAsync()
    {
        await _broker.DisposeAsync();
        _admin.Dispose();
        await _app.DisposeAsync();
    }

    [Fact]
    public async Task An_operation_that_throws_unexpectedly_releases_the_queue_for_the_next_one()
    {
        await _broker.DeadLetterChargeAsync("System.TimeoutException", "timed out");
        await using var db = fixture.CreateDbContext();
        await db.Database.ExecuteSqlRawAsync("""
            CREATE FUNCTION test_refuse_result() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.state <> 'running' THEN RAISE EXCEPTION 'test refuses the result'; END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER test_refuse_result BEFORE UPDATE ON error_queue_operations
              FOR EACH ROW EXECUTE FUNCTION test_refuse_result();
            """);
        try
        {
            using (var first = await _admin.PostJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { dryRun = true }))
            {
                Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
            }

            await _logs.Thrown.WaitAsync(TimeSpan.FromSeconds(30));
        }
        finally
        {
            await db.Database.ExecuteSqlRawAsync("""
                DROP TRIGGER IF EXISTS test_refuse_result ON error_queue_operations;
                DROP FUNCTION IF EXISTS test_refuse_result();
                """);
        }

        // The first operation is over (its runner threw); its lock must not outlive it.
        await Eventually.AssertAsync(async () =>
        {
            using var next = await _admin.PostJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { dryRun = true });
            Assert.Equal(HttpStatusCode.Accepted, next.StatusCode);
        }, TimeSpan.FromSeconds(15));
        Assert.Equal(1u, await _broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    /// <summary>Throws from the runner's "result not saved" error, once; ignores everything else.</summary>
    private sealed class ThrowingLogs : ILoggerProvider
    {
        private readonly TaskCompletionSource _thrown = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task Thrown => _thrown.Task;

        public ILogger CreateLogger(string categoryName) => new Logger(categoryName == RunnerCategory ? _thrown : null);

        public void Dispose()
        {
        }

        private sealed class Logger(TaskCompletionSource? thrown) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                if (thrown is not null && eventId.Id == ResultNotSavedEvent && thrown.TrySetResult())
                {
                    throw new InvalidOperationException("test: the logging provider failed");
                }
            }
        }
    }
}
