using System.Diagnostics.Metrics;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Worker.Hosting;

/// <summary>
/// Whether this worker reaches PostgreSQL, as the gauge <c>conveyor.worker.database_contact_age</c>: seconds since
/// PostgreSQL last answered it, since the worker's start while it never has. A worker that cannot reach it runs and is
/// scraped, so the "no worker" alert cannot see it, yet it applies no job (every one needs its inbox row) and publishes
/// no scheduled message; only its <c>/health/ready</c> said so. Asked every <see cref="Period"/>, <c>SELECT 1</c> on a
/// connection of the worker's own pool: a pool that has no free connection for as long counts as out of reach too, as
/// the worker's jobs wait for one just the same.
/// </summary>
public sealed class DatabaseContact : BackgroundService
{
    public const string AgeInstrument = "conveyor.worker.database_contact_age";

    /// <summary>How often PostgreSQL is asked; the age of a worker that reaches it stays under this and <see cref="AnswerTimeout"/>.</summary>
    public static readonly TimeSpan Period = TimeSpan.FromSeconds(5);

    /// <summary>
    /// How long one question may wait for its answer. Bounded apart from Npgsql's own timeouts (15 s to connect, then
    /// its cancellation's): a server that stops answering without closing anything must not hold the loop.
    /// </summary>
    public static readonly TimeSpan AnswerTimeout = TimeSpan.FromSeconds(5);

    private readonly IDbContextFactory<ConveyorDbContext> _dbFactory;
    private readonly TimeProvider _time;
    private long _answeredAtTicks;

    public DatabaseContact(IMeterFactory meters, IDbContextFactory<ConveyorDbContext> dbFactory, TimeProvider time)
    {
        _dbFactory = dbFactory;
        _time = time;
        _answeredAtTicks = time.GetUtcNow().UtcTicks;
        meters.Create(JobMetrics.MeterName).CreateObservableGauge(
            AgeInstrument,
            () => Age.TotalSeconds,
            unit: "s",
            description: "Seconds since PostgreSQL last answered this worker (since its start if never)");
    }

    /// <summary>How long ago PostgreSQL last answered (since the start if it never has).</summary>
    public TimeSpan Age => _time.GetUtcNow() - new DateTimeOffset(Interlocked.Read(ref _answeredAtTicks), TimeSpan.Zero);

    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        Periodically.RunAsync(Period, _time, AskQuietlyAsync, stoppingToken);

    private async Task AskQuietlyAsync(CancellationToken stoppingToken)
    {
        using var bounded = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken);
        bounded.CancelAfter(AnswerTimeout);
        var ask = AskAsync(bounded.Token);
        try
        {
            await ask.WaitAsync(bounded.Token);
            Interlocked.Exchange(ref _answeredAtTicks, _time.GetUtcNow().UtcTicks);
        }
        catch (Exception) when (!stoppingToken.IsCancellationRequested)
        {
            // No answer: the age grows. Not logged here: the readiness check's database entry logs the cause once
            // when it changes, and each part of the worker the outage stops says what it could not do.
            ask.Abandon();
        }
    }

    /// <summary>
    /// On the connection itself rather than through EF Core, as the readiness check does: an outage costs no EF Core
    /// error line every <see cref="Period"/>.
    /// </summary>
    private async Task AskAsync(CancellationToken cancellationToken)
    {
        await using var db = await _dbFactory.CreateDbContextAsync(cancellationToken);
        var connection = db.Database.GetDbConnection();
        try
        {
            await connection.OpenAsync(cancellationToken);
            await using var command = connection.CreateCommand();
            command.CommandText = "SELECT 1";
            await command.ExecuteScalarAsync(cancellationToken);
        }
        finally
        {
            await connection.CloseAsync();
        }
    }
}
