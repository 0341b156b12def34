using System.Data.Common;
using System.Net.Sockets;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Microsoft.AspNetCore.Builder;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// Loses, once, the commit's answer of the first statement saying <paramref name="marker"/>, after the server
/// applied it, throwing as Npgsql does for a broken socket: run on its own, the statement's own answer (which
/// carries the commit); run in a transaction, that transaction's COMMIT's. Add it to the worker's
/// <c>ConveyorDbContext</c> options (<see cref="AddTo"/>); a marker is text only the statement meant says.
/// With <paramref name="thenOutOfReach"/>, the database stays out of reach a little longer: once the answer is lost,
/// the first statement saying each of those markers fails before it reaches the server, as a connection refused
/// would (the question after the commit's outcome, say), each once; every other statement runs.
/// <see cref="PublishUntilSucceededAsync"/> runs a message through that worker to its job's success.
/// </summary>
public sealed class LostCommitAnswerAfter(string marker, params string[] thenOutOfReach) : DbTransactionInterceptor, IDbCommandInterceptor
{
    private readonly Lock _gate = new();
    private readonly List<string> _outOfReach = [.. thenOutOfReach];
    private bool _seen;
    private Guid? _inTransactionOn;
    private bool _fired;
    private int _refused;

    public bool Fired
    {
        get
        {
            lock (_gate)
            {
                return _fired;
            }
        }
    }

    /// <summary>How many statements failed as out of reach after the lost answer (one per marker of <c>thenOutOfReach</c> at most).</summary>
    public int Refused
    {
        get
        {
            lock (_gate)
            {
                return _refused;
            }
        }
    }

    /// <summary>Adds it to the worker's <c>ConveyorDbContext</c> options: <c>fixture.StartWorkerAsync(settings, lost.AddTo)</c>.</summary>
    public void AddTo(WebApplicationBuilder builder) =>
        builder.Services.ConfigureDbContext<ConveyorDbContext>(options => options.AddInterceptors(this));

    /// <summary>
    /// Publishes <paramref name="message"/> to <paramref name="worker"/> (started with <see cref="AddTo"/>), waits
    /// until the job of <paramref name="key"/> has succeeded and <paramref name="queue"/> is drained, and asserts that
    /// the answer was lost on the way. The job's row as it stands then: what the tests of a lost answer go on to check.
    /// </summary>
    public async Task<Job> PublishUntilSucceededAsync<T>(ConveyorFixture fixture, RunningApp worker, string queue, T message, string key)
        where T : class
    {
        await using var publisher = await TestPublisher.StartAsync(fixture);
        await publisher.PublishAsync(message);

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.BusinessKey == key)).Status);
        });
        await fixture.AssertDrainedAsync(worker, queue);
        Assert.True(Fired);
        await using var check = fixture.CreateDbContext();
        return await check.Jobs.SingleAsync(j => j.BusinessKey == key);
    }

    public ValueTask<InterceptionResult<int>> NonQueryExecutingAsync(
        DbCommand command, CommandEventData eventData, InterceptionResult<int> result, CancellationToken cancellationToken = default)
    {
        Executing(command);
        return ValueTask.FromResult(result);
    }

    public ValueTask<InterceptionResult<DbDataReader>> ReaderExecutingAsync(
        DbCommand command, CommandEventData eventData, InterceptionResult<DbDataReader> result, CancellationToken cancellationToken = default)
    {
        Executing(command);
        return ValueTask.FromResult(result);
    }

    public ValueTask<int> NonQueryExecutedAsync(DbCommand command, CommandExecutedEventData eventData, int result, CancellationToken cancellationToken = default)
    {
        Executed(command, eventData);
        return ValueTask.FromResult(result);
    }

    public async ValueTask<DbDataReader> ReaderExecutedAsync(DbCommand command, CommandExecutedEventData eventData, DbDataReader result, CancellationToken cancellationToken = default)
    {
        try
        {
            Executed(command, eventData);
        }
        catch (NpgsqlException)
        {
            // The statement is over on the server; its rows are never read.
            await result.DisposeAsync();
            throw;
        }

        return result;
    }

    public override Task TransactionCommittedAsync(DbTransaction transaction, TransactionEndEventData eventData, CancellationToken cancellationToken = default)
    {
        lock (_gate)
        {
            if (_fired || eventData.ConnectionId != _inTransactionOn)
            {
                return Task.CompletedTask;
            }

            _fired = true;
        }

        throw Lost();
    }

    private void Executing(DbCommand command)
    {
        lock (_gate)
        {
            if (!_fired || _outOfReach.FindIndex(m => command.CommandText.Contains(m, StringComparison.Ordinal)) is not (>= 0 and var index))
            {
                return;
            }

            _outOfReach.RemoveAt(index);
            _refused++;
        }

        throw OutOfReach();
    }

    private void Executed(DbCommand command, CommandEventData eventData)
    {
        if (!command.CommandText.Contains(marker, StringComparison.Ordinal))
        {
            return;
        }

        lock (_gate)
        {
            if (_seen)
            {
                return;
            }

            _seen = true;
            if (command.Transaction is not null)
            {
                _inTransactionOn = eventData.ConnectionId;
                return;
            }

            _fired = true;
        }

        throw Lost();
    }

    private static NpgsqlException OutOfReach() =>
        new("Failed to connect to 127.0.0.1:5432", new SocketException((int)SocketError.ConnectionRefused));

    private static NpgsqlException Lost() => new("Exception while reading from stream", new IOException("Connection reset by peer"));
}
