using System.Data.Common;
using Conveyor.Storage;
using Microsoft.AspNetCore.Builder;
using Microsoft.EntityFrameworkCore.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// Loses, once, the commit's answer of the first statement saying <paramref name="marker"/>, after the server
/// applied it, throwing as Npgsql does for a broken socket: run on its own, the statement's own answer (which
/// carries the commit); run in a transaction, that transaction's COMMIT's. Add it to the worker's
/// <c>ConveyorDbContext</c> options (<see cref="AddTo"/>); a marker is text only the statement meant says.
/// </summary>
public sealed class LostCommitAnswerAfter(string marker) : DbTransactionInterceptor, IDbCommandInterceptor
{
    private readonly Lock _gate = new();
    private bool _seen;
    private Guid? _inTransactionOn;
    private bool _fired;

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

    /// <summary>Adds it to the worker's <c>ConveyorDbContext</c> options: <c>fixture.StartWorkerAsync(settings, lost.AddTo)</c>.</summary>
    public void AddTo(WebApplicationBuilder builder) =>
        builder.Services.ConfigureDbContext<ConveyorDbContext>(options => options.AddInterceptors(this));

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

    private static NpgsqlException Lost() => new("Exception while reading from stream", new IOException("Connection reset by peer"));
}
