package clusterstate

import (
	"context"
	"fmt"
	"slices"
)

// usersPerStatement bounds one insert of users.
const usersPerStatement = 10_000

// AddUsers records users whose files the scans must walk (those already
// known are left as they are).
func (s *Store) AddUsers(ctx context.Context, users []string) error {
	if len(users) == 0 {
		return nil
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		return err
	}
	users = slices.Sorted(slices.Values(users))
	users = slices.Compact(users)
	for chunk := range slices.Chunk(users, usersPerStatement) {
		if _, err := s.pool.Exec(ctx, `INSERT INTO cring_users (user_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING`, chunk); err != nil {
			return fmt.Errorf("state: record %d users: %w", len(users), err)
		}
	}
	return nil
}

// Users lists every user recorded, sorted.
func (s *Store) Users(ctx context.Context) ([]string, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT user_id FROM cring_users ORDER BY user_id`)
	if err != nil {
		return nil, fmt.Errorf("state: read users: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, fmt.Errorf("state: read users: %w", err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("state: read users: %w", err)
	}
	return out, nil
}

// UserCount is how many users are recorded.
func (s *Store) UserCount(ctx context.Context) (int64, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		return 0, err
	}
	var n int64
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM cring_users`).Scan(&n); err != nil {
		return 0, fmt.Errorf("state: count users: %w", err)
	}
	return n, nil
}
